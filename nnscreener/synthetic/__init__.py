"""Building blocks of the synthetic CT generator; the public API is :mod:`nnscreener.synthetic.generator`.

patient (per-patient variation) -> anatomy (implicit organs: body, thorax, abdomen, skeleton) + tubes (vessel
trees, airways, bowel) + lesions -> render (texture, partial volume via raster, scanner blur and noise) -> writer.
"""

"""Converters of public CT datasets into nnU-Net raw datasets.

Every converter reads one public dataset in its ORIGINAL layout (never writing into it) and writes an nnU-Net raw
dataset (docs/design.md C1) under ``$nnUNet_raw/DatasetXXX_Name`` (or ``-o``):

- unlabeled training sets: ``imagesTr/{case}_0000.nii.gz`` only (no ``labelsTr``), ``labels {"background": 0}``;
- labeled test sets: ``imagesTs/{case}_0000.nii.gz`` + ``labelsTs/{case}.nii.gz`` (uint8, 1 = pathology, the
  image's exact geometry), ``labels {"background": 0, "pathology": 1}`` and ``lesion_kinds {"1": ...}``.

Images are int16 Hounsfield units (DICOM RescaleSlope / RescaleIntercept applied by SimpleITK's GDCM reader), with
the source's size, spacing, origin and direction. A case that cannot be converted (a missing file, a non-CT or
broken DICOM series, mismatched label geometry, ...) is skipped with a message naming it; the other cases are
converted, and the skipped ones are listed at the end and in ``conversion.json`` beside ``dataset.json``. The exit
code is 1 only when no case was converted (or on a usage error).

Array axis order follows SimpleITK / nnU-Net: ``(z, y, x)`` = (slice, DICOM row, DICOM column). Polygon vertices in
annotation files speak ``x`` (column) and ``y`` (row) in pixels.

Modules: ``convert_*`` (one per dataset, each with ``main``); :mod:`~dataset_conversion.runner` (the shared command
line and driver); :mod:`~dataset_conversion.raw_dataset` (the output folder and case files);
:mod:`~dataset_conversion.report` (converted / skipped cases); :mod:`~dataset_conversion.parallel` (the process
pool); :mod:`~dataset_conversion.case_ids`; :mod:`~dataset_conversion.rasterize` (polygon annotations to masks).
Image reading, DICOM series and HU conversion live in :mod:`nnscreener.io`.
"""

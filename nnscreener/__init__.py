"""nnScreener: unsupervised pathology segmentation in 3D CT (the Screener method) on top of nnU-Net v2."""

__version__ = "0.1.0"

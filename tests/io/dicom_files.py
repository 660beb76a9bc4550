"""Writing small DICOM CT series for tests (the converters' fixtures and the series reader's tests)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

SHAPE_YX = (16, 16)
SPACING_YX = (0.7, 0.8)  # DICOM PixelSpacing: between rows (y), between columns (x), mm
ORIGIN_XY = (-10.0, 20.0)


def stored_pixels(num_slices: int, seed: int) -> np.ndarray:
    """int16 (z, y, x) stored values, distinct per voxel position."""
    return np.random.default_rng(seed).integers(0, 2000, size=(num_slices, *SHAPE_YX)).astype(np.int16)


def write_dicom_series(folder: Path, stored_zyx: np.ndarray, z_positions: Sequence[float], *,
                       modality: str = "CT", slope: float = 1.0, intercept: float = -1024.0,
                       series_uid: Optional[str] = None, study_uid: str = "1.2.3.4", patient_id: str = "P",
                       description: str = "", series_number: int = 1,
                       image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL")) -> list[str]:
    """Writes one single-frame DICOM file per slice (file names in REVERSE position order, so readers must sort by
    ImagePositionPatient). Returns the SOPInstanceUIDs in slice order k."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    sops = []
    for k, (pixels, z) in enumerate(zip(stored_zyx, z_positions)):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study_uid, series_uid, patient_id
        ds.Modality, ds.ImageType = modality, list(image_type)
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, series_number, k + 1
        ds.ImagePositionPatient = [ORIGIN_XY[0], ORIGIN_XY[1], float(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(SPACING_YX)
        ds.SliceThickness = 1.0
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels.astype("<i2").tobytes()
        ds.save_as(folder / f"{len(stored_zyx) - k:04d}.dcm", enforce_file_format=True)
        sops.append(sop)
    return sops

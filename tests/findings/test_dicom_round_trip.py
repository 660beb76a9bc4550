"""NIfTI -> DICOM series (written here with pydicom) -> nnScreener_predict --threshold -> DICOM-SEG (and the map as
a parametric map) -> read back with highdicom / pydicom: both lie on the source slices and hold the findings mask /
the map; no patient name or ID of the source reaches a log, a table, a report or a file name."""
import gzip
import io
import json
import struct
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from nnscreener.cli.predict import main as predict_main
from nnscreener.inference.dicom_inputs import series_key
from tests.cli.test_predict import DATASET_ID, plans, write_ct, write_untrained_density_folder  # noqa: F401

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-8675309"
SPACING_XYZ = (2.0, 2.5, 4.0)


def write_series(folder: Path, hu_zyx: np.ndarray, modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                 z0=100.0):
    """One DICOM file per slice (names in reverse slice order), with the patient's name and ID; returns the UIDs
    (series, [SOP of slice k])."""
    folder.mkdir(parents=True)
    series_uid, sops = generate_uid(), []
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    for k, pixels in enumerate(hu_zyx):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = sop_class, ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", series_uid, "1.2.3.5"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDate, ds.StudyTime = "1", "", "", "", ""
        ds.Modality, ds.ImageType, ds.SeriesNumber, ds.InstanceNumber = modality, list(image_type), 3, k + 1
        ds.ImagePositionPatient = [-30.0, 12.0, z0 + SPACING_XYZ[2] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING_XYZ[1], SPACING_XYZ[0]]  # rows (y), columns (x)
        ds.SliceThickness = SPACING_XYZ[2]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.PixelData = (pixels.astype(np.int32) + 1024).astype("<i2").tobytes()
        ds.save_as(folder / f"{len(hu_zyx) - k:04d}.dcm", enforce_file_format=True)
        sops.append(ds.SOPInstanceUID)
    return series_uid, sops


def _run(capsys, *argv):
    code = predict_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _nifti_header(data: bytes) -> bytes:
    """The header and extensions of an uncompressed NIfTI-1 file: the bytes before its voxels (vox_offset)."""
    endian = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    return data[:int(struct.unpack(endian + "f", data[108:112])[0])]


def _png_text(data: bytes) -> bytes:
    """The text chunks (tEXt, iTXt, zTXt) of a PNG as Pillow reads them, not its compressed pixels."""
    with Image.open(io.BytesIO(data)) as png:
        return "\n".join(f"{key}\0{value}" for key, value in png.text.items()).encode("latin-1", "replace")


def _written_text(folder: Path) -> str:
    """Every file name under ``folder`` and the text of every non-DICOM file: NIfTI headers (decompressed) and PNG
    text chunks, not voxel or pixel data (float voxels or compressed pixels spell any 3 letters by chance)."""
    parts = []
    for path in folder.rglob("*"):
        parts.append(path.name)
        if path.is_file() and path.suffix != ".dcm":
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            if path.name.endswith((".nii", ".nii.gz")):
                data = _nifti_header(data)
            elif path.suffix == ".png":
                data = _png_text(data)
            parts.append(data.decode("latin-1"))
    return "\n".join(parts)


def test_written_text_reads_nifti_headers_and_png_text_not_voxels_or_pixels(tmp_path):
    voxels = np.frombuffer(b"Doe!" * 16, dtype=np.float32).reshape(4, 4, 1)  # voxel bytes that spell the name
    image = sitk.GetImageFromArray(voxels)
    image.SetMetaData("ITK_FileNotes", "Jane")  # the NIfTI header's descrip field
    sitk.WriteImage(image, str(tmp_path / "map.nii.gz"))
    from matplotlib.figure import Figure

    Figure().savefig(tmp_path / "report.png", metadata={"Title": "Smith"})
    written = _written_text(tmp_path)
    assert "Jane" in written and "Smith" in written and "Doe" not in written


def test_dicom_series_to_findings_and_a_dicom_seg_on_the_source_slices(plans, tmp_path, capsys):  # noqa: F811
    write_untrained_density_folder(plans)
    write_ct(tmp_path / "nifti.nii.gz")
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti.nii.gz")))  # (18, 40, 36)
    inputs = tmp_path / "inputs"
    uid, sops = write_series(inputs / "ct", hu)
    write_series(inputs / "scout", hu[:3], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(inputs / "mr", hu[:5], modality="MR")
    write_ct(inputs / "plain.nii.gz")
    out, key = tmp_path / "out", series_key(uid)
    common = ("-i", inputs, "-o", out, "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu", "-npp", 0,
              "-nps", 0)
    code, stdout, stderr = _run(capsys, *common, "--dicom_map")
    assert code == 0, stderr
    assert stderr.count("skipped DICOM series") == 2 and "localizer" in stderr and "not CT" in stderr
    score = sitk.ReadImage(str(out / f"{key}.nii.gz"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sorted(str(p) for p in (inputs / "ct").iterdir())[::-1])
    source = reader.Execute()
    assert score.GetSize() == source.GetSize()
    np.testing.assert_allclose(score.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(score.GetSpacing(), source.GetSpacing(), atol=1e-4)
    threshold = float(np.quantile(sitk.GetArrayFromImage(score), 0.99))
    pm = pydicom.dcmread(out / f"{key}_map_pm.dcm")
    assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == uid and pm.pixel_array.dtype == np.float32
    for frame, values in zip(pm.PerFrameFunctionalGroupsSequence, pm.pixel_array):
        k = sops.index(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [-30.0, 12.0, 100.0 + SPACING_XYZ[2] * k])
        np.testing.assert_array_equal(values, sitk.GetArrayFromImage(score)[k])

    code, stdout, stderr = _run(capsys, *common, "--threshold", f"value={threshold}", "--report")
    assert code == 0, stderr
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{key}_findings.nii.gz")))
    assert mask.any()
    seg = hd.seg.segread(out / f"{key}_findings_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.SegmentSequence[0].SegmentLabel == "nnScreener anomaly finding"
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [SPACING_XYZ[1], SPACING_XYZ[0]]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_sop = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = sops.index(source_sop)
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [-30.0, 12.0, 100.0 + SPACING_XYZ[2] * k])
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0] > 0, mask > 0)
    assert str(pydicom.dcmread(out / f"{key}_findings_seg.dcm").PatientID) == PATIENT_ID  # required for referencing
    index = json.loads((out / "dicom_series.json").read_text())
    assert index[key]["series_instance_uid"] == uid and (out / f"{key}_findings.png").is_file()
    written = _written_text(out) + stdout + stderr
    for secret in (PATIENT_NAME, "Doe", "Jane", PATIENT_ID, "8675309"):
        assert secret not in written

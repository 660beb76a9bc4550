"""Converters of the public datasets, each run on a tiny fixture built here in the dataset's original layout."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from dataset_conversion import (case_ids, convert_abdomenatlas, convert_amos, convert_kits, convert_lidc, convert_lits,
                                convert_midrc_ricord, convert_nlst, rasterize, raw_dataset)
from nnscreener.errors import ScreenerError
from tests.io.dicom_files import ORIGIN_XY, stored_pixels, write_dicom_series


# ---------------------------------------------------------------------------------------------------------------
# Fixture builders
# ---------------------------------------------------------------------------------------------------------------
def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below ``folder`` (the source must stay byte-identical)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_nifti(path: Path, array_zyx: np.ndarray, spacing=(0.9, 0.8, 2.0), origin=(5.0, -3.0, 11.0),
                direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return image


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def assert_same_geometry(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def run(module, source: Path, out: Optional[Path], dataset_id: int, *extra: str) -> int:
    """Runs a converter's main in-process; ``out`` None = the default, $nnUNet_raw."""
    output = ["-o", str(out)] if out is not None else []
    return module.main(["-i", str(source), "-d", str(dataset_id), *output, "-np", "1", *extra])


def conversion_log(folder: Path) -> dict:
    return json.loads((folder / "conversion.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# shared machinery: polygons, case ids, output folder
# ---------------------------------------------------------------------------------------------------------------
def test_rasterize_polygon_matches_hand_drawn_rectilinear_shapes():
    # L-shape: the rectangle x 2..9, y 3..6 plus x 2..5, y 6..11 (closed, vertices as (x, y))
    xs, ys = [2, 9, 9, 5, 5, 2], [3, 3, 6, 6, 11, 11]
    expected = np.zeros((16, 16), bool)
    expected[3:7, 2:10] = True
    expected[6:12, 2:6] = True
    np.testing.assert_array_equal(rasterize.rasterize_polygon(xs, ys, (16, 16), include_outline=True), expected)
    interior = np.zeros((16, 16), bool)
    interior[4:6, 3:9] = True
    interior[6:11, 3:5] = True
    np.testing.assert_array_equal(rasterize.rasterize_polygon(xs, ys, (16, 16), include_outline=False), interior)
    # partly outside the slice: clipped, no wrap-around
    clipped = rasterize.rasterize_polygon([-3, 4, 4, -3], [12, 12, 20, 20], (16, 16), include_outline=True)
    expected = np.zeros((16, 16), bool)
    expected[12:, :5] = True
    np.testing.assert_array_equal(clipped, expected)


def test_numbered_case_ids_number_only_groups_with_several_members():
    ids = case_ids.numbered_case_ids({"P1": ["b", "a"], "P2": ["z"]})
    assert ids == {("P1", "a"): "P1_1", ("P1", "b"): "P1_2", ("P2", "z"): "P2"}


def test_output_folder_refuses_overlap_with_source_and_taken_ids(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    with pytest.raises(ScreenerError, match="overlap"):
        raw_dataset.prepare_output_dataset(source, 7, "X", "Tr", source, overwrite=False)
    (tmp_path / "out" / "Dataset007_Other").mkdir(parents=True)
    with pytest.raises(ScreenerError, match="already used"):
        raw_dataset.prepare_output_dataset(tmp_path / "out", 7, "X", "Tr", source, overwrite=False)
    with pytest.raises(ScreenerError, match="1-999"):
        raw_dataset.dataset_folder_name(1000, "X")


# ---------------------------------------------------------------------------------------------------------------
# NLST (DICOM, unlabeled)
# ---------------------------------------------------------------------------------------------------------------
def test_nlst_chooses_thinnest_ct_series_and_skips_broken_studies(tmp_path: Path, capsys):
    src, out = tmp_path / "NLST", tmp_path / "raw"
    study = src / "100002" / "01-02-1999-NA-NLST-LSS-55322"
    write_dicom_series(study / "2.000-thick", stored_pixels(4, 0), [0, 2.5, 5, 7.5], series_number=2)
    thin = stored_pixels(6, 1)
    write_dicom_series(study / "3.000-thin", thin, [0, 1.25, 2.5, 3.75, 5, 6.25], series_number=3,
                       description="1.25mm")
    write_dicom_series(study / "1.000-scout", stored_pixels(2, 2), [0, 0.5], image_type=("ORIGINAL", "LOCALIZER"))
    (study / "3.000-thin" / "notes.txt").write_text("not a DICOM file, ignored")
    # missing slice: the gap of 5 mm among 2.5 mm gaps
    write_dicom_series(src / "100003" / "study", stored_pixels(4, 3), [0, 2.5, 7.5, 10])
    write_dicom_series(src / "100004" / "study" / "mr", stored_pixels(4, 4), [0, 2, 4, 6], modality="MR")
    broken = src / "100005" / "study" / "ct"
    write_dicom_series(broken, stored_pixels(4, 5), [0, 2, 4, 6])
    (broken / "0002.dcm").write_bytes(b"garbage, not DICOM")
    before = tree_digest(src)

    assert convert_nlst.main(["-i", str(src), "-d", "501", "-o", str(out), "-np", "2"]) == 0

    assert tree_digest(src) == before
    folder = out / "Dataset501_NLST"
    case = "100002_01-02-1999-NA-NLST-LSS-55322"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{case}_0000.nii.gz"]
    assert not (folder / "labelsTr").exists() and not (folder / ".partial").exists()
    array, image = read(folder / "imagesTr" / f"{case}_0000.nii.gz")
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(array, thin.astype(np.int32) - 1024)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.7, 1.25))
    np.testing.assert_allclose(image.GetOrigin(), (*ORIGIN_XY, 0.0))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 1 and dataset_json["labels"] == {"background": 0}
    assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["file_ending"] == ".nii.gz"
    log = conversion_log(folder)
    assert log["converted"][case]["series_description"] == "1.25mm"
    skipped = log["skipped"]
    assert "inconsistent slice spacing" in skipped["100003_study"]
    assert "not CT" in skipped["100004_study"]
    assert "unreadable" in skipped["100005_study"] and "0002.dcm" in skipped["100005_study"]
    printed = capsys.readouterr().out
    assert "skipped 3" in printed and "skipped 100004_study" in printed


def test_converter_exits_1_and_writes_nothing_when_no_case_converts(tmp_path: Path, capsys):
    src, out = tmp_path / "NLST", tmp_path / "raw"
    write_dicom_series(src / "100004" / "study" / "mr", stored_pixels(4, 4), [0, 2, 4, 6], modality="MR")
    assert run(convert_nlst, src, out, 501) == 1
    assert not (out / "Dataset501_NLST").exists()
    assert "not CT" in capsys.readouterr().out
    assert run(convert_nlst, tmp_path / "missing", out, 501) == 1
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# LIDC-IDRI (DICOM + reader XML, labeled)
# ---------------------------------------------------------------------------------------------------------------
def _roi(sop: str, z: float, points, inclusion: bool = True) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def _square(x0: int, y0: int, x1: int, y1: int, full_chain: bool = False) -> list[tuple[int, int]]:
    """Outline of the square with corners (x0, y0), (x1, y1): its corners, or every boundary pixel in order."""
    if not full_chain:
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return ([(x, y0) for x in range(x0, x1)] + [(x1, y) for y in range(y0, y1)]
            + [(x, y1) for x in range(x1, x0, -1)] + [(x0, y) for y in range(y1, y0, -1)])


def _lidc_xml(series_uid: str, sessions: list[str], root: str = "LidcReadMessage") -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="http://www.nih.gov"><ResponseHeader>'
            f"<SeriesInstanceUid>{series_uid}</SeriesInstanceUid></ResponseHeader>"
            + "".join(f"<readingSession><servicingRadiologistID>r{k}</servicingRadiologistID>{s}</readingSession>"
                      for k, s in enumerate(sessions)) + f"</{root}>")


def _nodule(name: str, rois: str) -> str:
    return f"<unblindedReadNodule><noduleID>{name}</noduleID>{rois}</unblindedReadNodule>"


def _interior(x0: int, y0: int, x1: int, y1: int) -> set:
    return {(y, x) for y in range(y0 + 1, y1) for x in range(x0 + 1, x1)}


def _filled(x0: int, y0: int, x1: int, y1: int) -> set:
    return {(y, x) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)}


def _build_lidc(src: Path) -> tuple[np.ndarray, dict[int, set], dict[int, set]]:
    """Three readers on a 5-slice series. Returns the stored pixels and the hand-computed nodule voxels per slice
    for min_readers 2 and 1."""
    folder = src / "LIDC-IDRI-0001" / "01-01-2000-NA-30178" / "3000566.000000-03192"
    stored = stored_pixels(5, 7)
    uid = generate_uid()
    z = [-40.0, -37.5, -35.0, -32.5, -30.0]
    sops = write_dicom_series(folder, stored, z, series_uid=uid, slope=2.0, intercept=-1000.0)
    reader_a = _nodule("A1", _roi(sops[2], z[2], _square(3, 4, 8, 9, full_chain=True))
                       + _roi("1.2.3.999", z[3], _square(3, 4, 8, 9)))  # unknown SOP: placed by z position
    reader_b = _nodule("B1", _roi(sops[2], z[2], _square(5, 6, 10, 11))
                       + _roi(sops[2], z[2], _square(8, 9, 10, 11), inclusion=False))
    reader_c = (_nodule("C1", _roi(sops[3], z[3], _square(3, 4, 8, 9)))
                + _nodule("small", _roi(sops[2], z[2], [(7, 8)]))  # < 3 mm: one point, ignored
                + "<nonNodule><imageZposition>-35</imageZposition><locus><xCoord>7</xCoord>"
                  "<yCoord>8</yCoord></locus></nonNodule>")
    (folder / "069.xml").write_text(_lidc_xml(uid, [reader_a, reader_b, reader_c]))
    cxr = src / "LIDC-IDRI-0001" / "cxr"
    cxr.mkdir()
    (cxr / "158.xml").write_text(_lidc_xml("9.9.9", [], root="IdriReadMessage"))
    a2, a3 = _interior(3, 4, 8, 9), _interior(3, 4, 8, 9)
    b2 = _interior(5, 6, 10, 11) - _filled(8, 9, 10, 11)
    c3 = _interior(3, 4, 8, 9)
    two = {2: a2 & b2, 3: a3 & c3}
    one = {2: a2 | b2, 3: a3 | c3}
    return stored, two, one


def _mask_voxels(mask_zyx: np.ndarray) -> dict[int, set]:
    slices = np.unique(np.nonzero(mask_zyx)[0])
    return {int(k): {(int(y), int(x)) for y, x in zip(*np.nonzero(mask_zyx[k]))} for k in slices}


@pytest.mark.parametrize("min_readers", [1, 2, 3])
def test_lidc_consensus_mask_equals_hand_computed_voxels(tmp_path: Path, min_readers: int):
    src, out = tmp_path / "LIDC-IDRI", tmp_path / "raw"
    stored, two, one = _build_lidc(src)
    # a second patient whose outline lies on no slice of its series, and a third with a missing slice
    folder = src / "LIDC-IDRI-0002" / "study" / "series"
    uid = generate_uid()
    write_dicom_series(folder, stored_pixels(4, 8), [0, 2, 4, 6], series_uid=uid)
    (folder / "069.xml").write_text(_lidc_xml(uid, [_nodule("X", _roi("1.2.3.998", 50.0, _square(3, 3, 8, 8)))]))
    folder = src / "LIDC-IDRI-0003" / "study" / "series"
    uid = generate_uid()
    write_dicom_series(folder, stored_pixels(4, 9), [0, 2, 6, 8], series_uid=uid)
    (folder / "069.xml").write_text(_lidc_xml(uid, []))
    before = tree_digest(src)

    assert run(convert_lidc, src, out, 503, "--min_readers", str(min_readers)) == 0

    assert tree_digest(src) == before
    folder = out / "Dataset503_LIDC"
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["LIDC-IDRI-0001_0000.nii.gz"]
    image_array, image = read(folder / "imagesTs" / "LIDC-IDRI-0001_0000.nii.gz")
    np.testing.assert_array_equal(image_array, 2 * stored.astype(np.int32) - 1000)  # slope 2, intercept -1000
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.7, 2.5))
    np.testing.assert_allclose(image.GetOrigin(), (*ORIGIN_XY, -40.0))
    mask, label = read(folder / "labelsTs" / "LIDC-IDRI-0001.nii.gz")
    assert label.GetPixelID() == sitk.sitkUInt8 and set(np.unique(mask)) <= {0, 1}
    assert_same_geometry(label, image)
    expected = {1: one, 2: two, 3: {}}[min_readers]
    assert _mask_voxels(mask) == {k: v for k, v in expected.items() if v}
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "pathology": 1}
    assert dataset_json["lesion_kinds"] == {"1": "lung_nodule"}
    log = conversion_log(folder)
    assert log["converted"]["LIDC-IDRI-0001"]["num_readers"] == 3
    assert "matches no slice" in log["skipped"]["LIDC-IDRI-0002"]
    assert "inconsistent slice spacing" in log["skipped"]["LIDC-IDRI-0003"]
    assert log["options"]["min_readers"] == min_readers


# ---------------------------------------------------------------------------------------------------------------
# MIDRC-RICORD-1a (DICOM + MD.ai JSON, labeled)
# ---------------------------------------------------------------------------------------------------------------
def test_midrc_ricord_masks_from_mdai_freeform_and_polygon_annotations(tmp_path: Path):
    src, out = tmp_path / "MIDRC-RICORD-1A", tmp_path / "raw"
    patient = src / "MIDRC-RICORD-1A-419639-000082" / "study"
    uid, other_uid, mr_uid = generate_uid(), generate_uid(), generate_uid()
    stored = stored_pixels(5, 11)
    sops = write_dicom_series(patient / "lung", stored, [0, 3, 6, 9, 12], series_uid=uid)
    write_dicom_series(patient / "mediastinum", stored_pixels(5, 12), [0, 3, 6, 9, 12], series_uid=other_uid)
    mr_sops = write_dicom_series(src / "MIDRC-RICORD-1A-000002" / "s" / "mr", stored_pixels(4, 13), [0, 3, 6, 9],
                                 series_uid=mr_uid, modality="MR")
    ring = [[3, 3], [10, 3], [10, 8], [3, 8]]
    hole = [[5, 5], [8, 5], [8, 7], [5, 7]]
    export = {
        "labelGroups": [{"labels": [{"id": "L1", "name": "Infectious opacity"}, {"id": "L2", "name": "Atelectasis"},
                                    {"id": "L3", "name": "Typical Appearance"}]}],
        "datasets": [{"annotations": [
            {"SeriesInstanceUID": uid, "SOPInstanceUID": sops[1], "labelId": "L1",
             "data": {"foreground": [ring], "background": [hole]}},
            {"SeriesInstanceUID": uid, "SOPInstanceUID": sops[3], "labelId": "L2",
             "data": {"vertices": [[1, 1], [4, 1], [4, 4], [1, 4]]}},
            {"SeriesInstanceUID": uid, "labelId": "L3", "data": None},
            {"SeriesInstanceUID": mr_uid, "SOPInstanceUID": mr_sops[0], "labelId": "L1",
             "data": {"vertices": ring}},
            {"SeriesInstanceUID": "7.7.7", "SOPInstanceUID": "7.7.7.1", "labelId": "L1", "data": {"vertices": ring}},
        ]}]}
    (src / "MIDRC-RICORD-1a_annotations.json").write_text(json.dumps(export))
    before = tree_digest(src)
    opacity = np.zeros((5, 16, 16), bool)
    opacity[1, 3:9, 3:11] = True
    opacity[1, 6, 6:8] = False  # strictly inside the hole
    atelectasis = np.zeros((5, 16, 16), bool)
    atelectasis[3, 1:5, 1:5] = True

    for labels, expected in ((None, opacity | atelectasis), ("infectious OPACITY", opacity)):
        args = ["--overwrite"] + (["--labels", labels] if labels else [])
        assert run(convert_midrc_ricord, src, out, 504, *args) == 0
        folder = out / "Dataset504_MIDRCRICORD1a"
        mask, label = read(folder / "labelsTs" / "MIDRC-RICORD-1A-419639-000082.nii.gz")
        np.testing.assert_array_equal(mask, expected)
        image_array, image = read(folder / "imagesTs" / "MIDRC-RICORD-1A-419639-000082_0000.nii.gz")
        np.testing.assert_array_equal(image_array, stored.astype(np.int32) - 1024)
        assert_same_geometry(label, image)
    assert tree_digest(src) == before
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["MIDRC-RICORD-1A-419639-000082_0000.nii.gz"]
    log = conversion_log(folder)
    assert "not CT" in log["skipped"]["MIDRC-RICORD-1A-000002"]
    assert "not found" in log["skipped"]["series-7.7.7"]
    assert log["options"]["label_counts"] == {"Infectious opacity": 3, "Atelectasis": 1}


# ---------------------------------------------------------------------------------------------------------------
# KiTS, LiTS (NIfTI, labeled)
# ---------------------------------------------------------------------------------------------------------------
def test_kits_tumor_and_cyst_become_pathology(tmp_path: Path):
    src, out = tmp_path / "kits23" / "dataset", tmp_path / "raw"
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1000, 1000, size=(6, 8, 10)).astype(np.float32)
    seg = rng.integers(0, 4, size=(6, 8, 10)).astype(np.uint8)
    reference = write_nifti(src / "case_00000" / "imaging.nii.gz", hu)
    write_nifti(src / "case_00000" / "segmentation.nii.gz", seg)
    write_nifti(src / "case_00001" / "imaging.nii.gz", hu[:3])
    write_nifti(src / "case_00001" / "aggregated_MAJ_seg.nii.gz", seg[:3])  # kits21 layout
    write_nifti(src / "case_00002" / "imaging.nii.gz", hu)  # kits19 test case: no segmentation
    write_nifti(src / "case_00003" / "imaging.nii.gz", hu)
    write_nifti(src / "case_00003" / "segmentation.nii.gz", seg[:, :4])  # size mismatch
    before = tree_digest(src)

    assert run(convert_kits, src.parent, out, 502) == 0

    assert tree_digest(src) == before
    folder = out / "Dataset502_KiTS"
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["case_00000.nii.gz", "case_00001.nii.gz"]
    image_array, image = read(folder / "imagesTs" / "case_00000_0000.nii.gz")
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(image_array, np.rint(hu).astype(np.int16))
    assert_same_geometry(image, reference)
    mask, label = read(folder / "labelsTs" / "case_00000.nii.gz")
    np.testing.assert_array_equal(mask, (seg == 2) | (seg == 3))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(label, reference)
    np.testing.assert_array_equal(read(folder / "labelsTs" / "case_00001.nii.gz")[0], np.isin(seg[:3], (2, 3)))
    skipped = conversion_log(folder)["skipped"]
    assert "no segmentation" in skipped["case_00002"]
    assert "size" in skipped["case_00003"]


def test_lits_tumor_becomes_pathology_and_missing_segmentation_is_listed(tmp_path: Path, nnunet_env: dict):
    src, out = tmp_path / "LiTS", nnunet_env["nnUNet_raw"]
    rng = np.random.default_rng(4)
    hu = rng.integers(-1024, 1500, size=(5, 8, 8)).astype(np.int16)
    seg = rng.integers(0, 3, size=(5, 8, 8)).astype(np.uint8)
    reference = write_nifti(src / "Training Batch 1" / "volume-0.nii", hu)
    write_nifti(src / "Training Batch 1" / "segmentation-0.nii", seg)
    write_nifti(src / "Training Batch 2" / "volume-28.nii", hu[::-1].copy())
    write_nifti(src / "Training Batch 1" / "segmentation-28.nii", seg[::-1].copy())
    write_nifti(src / "Training Batch 2" / "volume-29.nii", hu)
    write_nifti(src / "Test" / "test-volume-5.nii", hu)  # challenge test volume: not a case
    before = tree_digest(src)

    assert run(convert_lits, src, None, 505) == 0  # written into $nnUNet_raw

    assert tree_digest(src) == before
    folder = out / "Dataset505_LiTS"
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["lits_000_0000.nii.gz", "lits_028_0000.nii.gz"]
    image_array, image = read(folder / "imagesTs" / "lits_000_0000.nii.gz")
    np.testing.assert_array_equal(image_array, hu)
    assert_same_geometry(image, reference)
    np.testing.assert_array_equal(read(folder / "labelsTs" / "lits_000.nii.gz")[0], seg == 2)
    np.testing.assert_array_equal(read(folder / "labelsTs" / "lits_028.nii.gz")[0], seg[::-1] == 2)
    assert "no segmentation" in conversion_log(folder)["skipped"]["lits_029"]
    assert json.loads((folder / "dataset.json").read_text())["lesion_kinds"] == {"1": "liver_tumor"}


# ---------------------------------------------------------------------------------------------------------------
# AMOS, AbdomenAtlas (NIfTI, unlabeled)
# ---------------------------------------------------------------------------------------------------------------
def test_amos_keeps_ct_ids_and_excludes_mri_with_a_message(tmp_path: Path):
    src, out = tmp_path / "amos22", tmp_path / "raw"
    rng = np.random.default_rng(5)
    ct = rng.integers(-1024, 1200, size=(4, 8, 8)).astype(np.int16)
    mri = rng.integers(0, 800, size=(4, 8, 8)).astype(np.int16)
    reference = write_nifti(src / "imagesTr" / "amos_0001.nii.gz", ct)
    write_nifti(src / "labelsTr" / "amos_0001.nii.gz", np.ones_like(ct, dtype=np.uint8))  # ignored
    write_nifti(src / "imagesVa" / "amos_0002.nii.gz", ct.astype(np.float32) + 0.4)
    write_nifti(src / "imagesTr" / "amos_0540.nii.gz", mri)  # MRI by id
    write_nifti(src / "imagesTs" / "amos_0003.nii.gz", mri)  # CT id, MRI-like intensities
    write_nifti(src / "amos_unlabeled_ct_5000_5399" / "amos_5000.nii.gz", ct)
    write_nifti(src / "amos22_unlabeled_mri_7000_8199" / "amos_7000.nii.gz", mri)
    (src / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    before = tree_digest(src)

    assert run(convert_amos, src, out, 506) == 0

    assert tree_digest(src) == before
    folder = out / "Dataset506_AMOSCT"
    names = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert names == ["amos_0001_0000.nii.gz", "amos_0002_0000.nii.gz", "amos_5000_0000.nii.gz"]
    image_array, image = read(folder / "imagesTr" / "amos_0001_0000.nii.gz")
    np.testing.assert_array_equal(image_array, ct)
    assert_same_geometry(image, reference)
    np.testing.assert_array_equal(read(folder / "imagesTr" / "amos_0002_0000.nii.gz")[0], ct)  # 0.4 rounds away
    skipped = conversion_log(folder)["skipped"]
    assert set(skipped) == {"amos_0540", "amos_7000", "amos_0003"}
    assert "MRI" in skipped["amos_0540"] and "MRI" in skipped["amos_7000"] and "-500 HU" in skipped["amos_0003"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3
    (src / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}}))
    with pytest.raises(ScreenerError, match="not CT"):
        convert_amos.find_cases(src)


def test_abdomenatlas_copies_int16_cts_converts_others_and_respects_overwrite(tmp_path: Path, capsys):
    src, out = tmp_path / "AbdomenAtlas1.1Mini", tmp_path / "raw"
    rng = np.random.default_rng(6)
    ct = rng.integers(-1024, 1200, size=(4, 8, 8)).astype(np.int16)
    write_nifti(src / "BDMAP_00000001" / "ct.nii.gz", ct)
    reference = write_nifti(src / "part2" / "BDMAP_00000002" / "ct.nii.gz", ct.astype(np.float64) - 0.3)
    (src / "BDMAP_00000003" / "segmentations").mkdir(parents=True)  # no ct.nii.gz
    before = tree_digest(src)

    assert run(convert_abdomenatlas, src, out, 507) == 0

    assert tree_digest(src) == before
    folder = out / "Dataset507_AbdomenAtlas"
    copied = folder / "imagesTr" / "BDMAP_00000001_0000.nii.gz"
    assert copied.read_bytes() == (src / "BDMAP_00000001" / "ct.nii.gz").read_bytes()
    converted, image = read(folder / "imagesTr" / "BDMAP_00000002_0000.nii.gz")
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(converted, ct)
    assert_same_geometry(image, reference)
    assert "missing file" in conversion_log(folder)["skipped"]["BDMAP_00000003"]
    capsys.readouterr()
    assert run(convert_abdomenatlas, src, out, 507) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert run(convert_abdomenatlas, src, out, 507, "--overwrite") == 0


def test_every_converter_has_help_naming_its_layout(capsys):
    for module in (convert_nlst, convert_amos, convert_abdomenatlas, convert_lidc, convert_midrc_ricord,
                   convert_kits, convert_lits):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "-i INPUT" in text and "--overwrite" in text and "Source layout" in text

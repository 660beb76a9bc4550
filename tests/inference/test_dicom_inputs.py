"""DICOM series among prediction inputs: staged in slice order as HU, named by a hash, bad series skipped by key."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.inference.dicom_inputs import collect_inputs, series_key, write_series_index
from tests.io.dicom_files import stored_pixels, write_dicom_series


def _image(path):
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkInt16), str(path))


def test_image_folders_without_dicom_are_discovered_as_before(tmp_path):
    _image(tmp_path / "a_0000.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    found = collect_inputs(tmp_path, tmp_path / "staging")
    assert [c.case_id for c in found.cases] == ["a"] and not found.series and not (tmp_path / "staging").exists()


def test_series_are_staged_in_slice_order_and_bad_ones_skipped_with_their_key(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image(inputs / "plain.nii.gz")
    pixels = stored_pixels(5, seed=0)
    good = "1.2.826.0.1.1"
    write_dicom_series(inputs / "good", pixels, [10.0, 12.0, 14.0, 16.0, 18.0], series_uid=good)
    gap = "1.2.826.0.1.2"
    write_dicom_series(inputs / "gap", pixels, [10.0, 12.0, 16.0, 18.0, 20.0], series_uid=gap)
    found = collect_inputs(inputs, tmp_path / "staging")
    assert [c.case_id for c in found.cases] == sorted([series_key(good), "plain"])
    assert list(found.series) == [series_key(good)]
    assert len(found.skipped) == 1 and series_key(gap) in found.skipped[0] and gap not in found.skipped[0]
    assert "slice spacing" in found.skipped[0]
    staged = sitk.ReadImage(found.cases[0].files[0])
    hu = sitk.GetArrayFromImage(staged)
    np.testing.assert_array_equal(hu, pixels.astype(np.int32) - 1024)  # slice k at z = 10 + 2 k, intercept -1024
    assert staged.GetOrigin()[2] == pytest.approx(10.0) and staged.GetSpacing()[2] == pytest.approx(2.0)
    index = write_series_index(tmp_path, found.series)
    assert good in index.read_text() and str(inputs) not in index.read_text()


def test_each_part_stages_only_its_own_series_and_parts_cover_every_case(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image(inputs / "plain.nii.gz")
    uids = [f"1.2.826.0.1.{k}" for k in range(1, 4)]
    for k, uid in enumerate(uids):
        write_dicom_series(inputs / f"s{k}", stored_pixels(3, seed=k), [0.0, 2.0, 4.0], series_uid=uid)
    every = sorted([series_key(u) for u in uids] + ["plain"])
    parts = [collect_inputs(inputs, tmp_path / f"staging{p}", 3, p) for p in range(3)]
    assert [[c.case_id for c in part.cases] for part in parts] == [every[p::3] for p in range(3)]
    for p, part in enumerate(parts):
        staged = sorted(f.name for f in (tmp_path / f"staging{p}").glob("*.nii.gz")) if (
            tmp_path / f"staging{p}").exists() else []
        assert staged == [f"{c.case_id}_0000.nii.gz" for c in part.cases if c.case_id != "plain"]
        assert sorted(part.series) == sorted(series_key(u) for u in uids)  # the index names every part's series
    with pytest.raises(ScreenerError, match="-part_id"):
        collect_inputs(inputs, tmp_path / "staging_bad", 3, 3)
    assert not (tmp_path / "staging_bad").exists()  # refused before reading any series


def test_a_folder_with_only_unusable_series_is_one_error(tmp_path):
    write_dicom_series(tmp_path / "in" / "mr", stored_pixels(4, seed=1), [0.0, 1.0, 2.0, 3.0], modality="MR")
    with pytest.raises(ScreenerError, match="no images and no usable DICOM CT series.*not CT"):
        collect_inputs(tmp_path / "in", tmp_path / "staging")

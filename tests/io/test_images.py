"""Image files: the readable endings and int16 HU conversion."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.inference import input_files
from nnscreener.io import images


def test_prediction_input_reads_the_endings_defined_in_io():
    assert input_files.IMAGE_ENDINGS is images.IMAGE_ENDINGS
    assert images.IMAGE_ENDINGS[0] == images.NIFTI_ENDING == ".nii.gz"


def test_to_int16_hu_rounds_clips_slabwise_and_rejects_nan():
    values = np.random.default_rng(9).uniform(-40000, 40000, size=(70, 3, 4)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.5, 0.6, 3.0))
    out = images.to_int16_hu(image, "x", slab=32)
    assert out.GetPixelID() == sitk.sitkInt16 and out.GetSpacing() == image.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), np.clip(np.rint(values), -32768, 32767))
    unsigned = sitk.GetImageFromArray(np.array([[[0, 40000, 1200]]], dtype=np.uint16))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(images.to_int16_hu(unsigned, "u")), [[[0, 32767, 1200]]])
    values[40, 1, 2] = np.nan
    with pytest.raises(ScreenerError, match="NaN"):
        images.to_int16_hu(sitk.GetImageFromArray(values), "scan.nii.gz")


def _ct_like(shape=(12, 20, 20)) -> np.ndarray:
    """Air around a block of soft tissue, int16 HU."""
    hu = np.full(shape, -1000, np.int16)
    hu[2:-2, 4:-4, 4:-4] = 40
    return hu


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused_naming_the_file(tmp_path, ending):
    path = tmp_path / f"scan{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(_ct_like()), str(path))
    images.check_complete(path)  # complete: accepted
    assert images.read_image(path).GetSize() == (20, 20, 12)
    whole = path.read_bytes()
    for cut in (len(whole) - 1, len(whole) * 2 // 3, len(whole) // 3):
        path.write_bytes(whole[:cut])
        with pytest.raises(ScreenerError, match="cannot read image .*truncated") as info:
            images.read_image(path)
        assert str(path) in str(info.value)


def test_gzip_of_a_truncated_nifti_is_refused(tmp_path):
    """A complete gzip stream around a NIfTI file that lacks its end: the header's size check catches it."""
    import gzip

    plain = tmp_path / "scan.nii"
    sitk.WriteImage(sitk.GetImageFromArray(_ct_like()), str(plain))
    packed = tmp_path / "scan.nii.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()[:-100]))
    with pytest.raises(ScreenerError, match="NIfTI header announces"):
        images.check_complete(packed)


def test_ct_intensities_pass_and_non_ct_intensities_are_refused_naming_the_file():
    assert images.non_ct_reasons(_ct_like(), sitk.sitkInt16) == []
    padded = _ct_like().astype(np.float32)
    padded[0] = -3024  # scanner padding outside the field of view
    assert images.non_ct_reasons(padded) == []
    rng = np.random.default_rng(0)
    mri = rng.uniform(0, 1, (12, 20, 20)).astype(np.float32)
    reasons = images.non_ct_reasons(mri, sitk.sitkFloat32)
    assert any("span less than" in r for r in reasons) and any("no air" in r for r in reasons)
    photo = rng.integers(0, 256, (12, 20, 20)).astype(np.uint8)
    assert any("8-bit unsigned" in r for r in images.non_ct_reasons(photo, sitk.sitkUInt8))
    with pytest.raises(ScreenerError, match="mri.nii.gz does not look like a CT .*--allow_non_ct"):
        images.check_ct_intensities(mri, "mri.nii.gz", sitk.sitkFloat32)
    all_air = np.full((12, 20, 20), -1000.0)
    assert any("no soft tissue" in r for r in images.non_ct_reasons(all_air))

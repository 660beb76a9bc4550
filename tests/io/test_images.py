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

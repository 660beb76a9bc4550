import copy
import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnscreener.errors import ScreenerError
from nnscreener.inference.export import fill_outside_body, map_to_original_geometry, upsample_to_patch, write_map
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

ORIGIN = (-12.5, 40.25, 7.75)
SPACING_XYZ = (0.8, 0.9, 2.0)  # anisotropic, ratio 2.5 (below nnU-Net's separate-z threshold of 3)
BOX_ZYX = (slice(2, 18), slice(4, 36), slice(5, 44))  # the nonzero region nnU-Net's crop keeps


def _rotation_direction() -> tuple:
    """A proper rotation (30 deg about z, then 20 deg about x), flattened row-major as SimpleITK wants."""
    a, b = math.radians(30), math.radians(20)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rz @ rx).ravel())


def _linear_map(shape_zyx) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape_zyx], indexing="ij")
    return 10 + 0.5 * z + 0.3 * y + 0.2 * x


@pytest.fixture
def plans(nnunet_env):
    return make_fake_preprocessed_dataset(nnunet_env, n_cases=1, shape_zyx=(8, 16, 16))


def _with_transpose(plans, forward):
    raw = copy.deepcopy(plans.plans)
    raw["transpose_forward"] = list(forward)
    raw["transpose_backward"] = [int(i) for i in np.argsort(forward)]
    return dataclasses.replace(plans, plans=raw)


@pytest.mark.parametrize("transpose_forward", [(0, 1, 2), (1, 2, 0)])
def test_map_in_original_space_survives_nnunet_preprocessing_geometry(plans, tmp_path, transpose_forward):
    """Crop + resample with nnU-Net's own preprocessing, export back: same grid, same values, exact geometry."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    plans = _with_transpose(plans, transpose_forward)
    truth = _linear_map((20, 40, 48))  # (z, y, x) in SimpleITK's array order
    image_array = np.zeros_like(truth)
    image_array[BOX_ZYX] = truth[BOX_ZYX]
    image = sitk.GetImageFromArray(image_array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN)
    image.SetDirection(_rotation_direction())
    source = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(image, str(source))

    data, _, properties = DefaultPreprocessor(verbose=False).run_case(
        [str(source)], None, plans.plans_manager, plans.configuration_manager, plans.dataset_json)
    assert data.shape[1:] != truth.shape  # really cropped and resampled
    body = np.ones(data.shape[1:], dtype=bool)
    out = map_to_original_geometry(data[0], body, properties, plans.plans_manager, plans.configuration_manager)
    target = tmp_path / "out" / "case.nii.gz"
    write_map(out, properties, target)

    written, original = sitk.ReadImage(str(target)), sitk.ReadImage(str(source))
    assert written.GetPixelID() == sitk.sitkFloat32
    assert written.GetSize() == original.GetSize()
    assert written.GetSpacing() == original.GetSpacing()
    assert written.GetOrigin() == original.GetOrigin()
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
    result = sitk.GetArrayFromImage(written)
    np.testing.assert_array_equal(result, out)

    error = np.abs(result[BOX_ZYX] - truth[BOX_ZYX])
    # a one-voxel shift along any axis would cost >= 0.2 everywhere; only the box's faces blur (edge clamping)
    assert error.mean() < 0.15
    interior = tuple(slice(m, -m) for m in (4, 6, 6))
    assert error[interior].max() < 0.02
    outside = np.ones(truth.shape, dtype=bool)
    outside[BOX_ZYX] = False
    assert np.all(result[outside] == result.min())
    assert result.min() <= result[BOX_ZYX].min()


def _identity_properties(shape_zyx, bbox):
    return {
        "spacing": [4.5, 3.0, 3.0],  # = the cpu plans' spacing: resampling is the identity
        "shape_before_cropping": shape_zyx,
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping_and_before_resampling": tuple(b - a for a, b in bbox),
        "sitk_stuff": {"spacing": (3.0, 3.0, 4.5), "origin": (1.0, 2.0, 3.0),
                       "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)},
    }


def test_outside_body_and_outside_crop_get_the_body_minimum(plans):
    rng = np.random.default_rng(0)
    bbox = [[1, 7], [2, 10], [0, 9]]
    properties = _identity_properties((8, 12, 9), bbox)
    map_zyx = rng.normal(5.0, 2.0, size=(6, 8, 9)).astype(np.float32)
    body = np.zeros((6, 8, 9), dtype=bool)
    body[1:5, 2:7, 3:8] = True
    map_zyx[~body] -= 100.0  # outside values below the body's: they must not set the minimum either
    map_zyx[0, 0, 0] = 1e6  # nor leak in when large

    out = map_to_original_geometry(map_zyx, body, properties, plans.plans_manager, plans.configuration_manager)
    fill = map_zyx[body].min()
    expected = np.full((8, 12, 9), fill, dtype=np.float32)
    expected[1:7, 2:10, 0:9] = np.where(body, map_zyx, fill)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and out.min() == fill


def test_fill_outside_body_with_an_empty_body_uses_the_map_minimum():
    map_zyx = np.array([[[3.0, -2.0], [7.0, 1.0]]], dtype=np.float32)
    filled, fill = fill_outside_body(map_zyx, np.zeros_like(map_zyx, dtype=bool))
    assert fill == -2.0 and np.all(filled == -2.0)
    with pytest.raises(ValueError, match="differ in shape"):
        fill_outside_body(map_zyx, np.zeros((2, 2, 2), dtype=bool))


def test_upsample_to_patch_is_trilinear_with_block_centres():
    pooled = torch.tensor([0.0, 3.0]).reshape(1, 1, 1, 1, 2)  # two blocks of 3 voxels along x
    up = upsample_to_patch(pooled.half(), (2, 2, 6))
    assert up.shape == (1, 1, 2, 2, 6) and up.dtype == torch.float32
    # block centres at x = 1 and 4 carry the pooled values; x = 2, 3 lie 1/3 and 2/3 between them; outside clamped
    np.testing.assert_allclose(up[0, 0, 0, 0].numpy(), [0.0, 0.0, 1.0, 2.0, 3.0, 3.0], atol=1e-3)
    full = torch.rand(2, 1, 2, 2, 6)
    assert torch.equal(upsample_to_patch(full, (2, 2, 6)), full)  # already at patch size: unchanged


def test_write_map_errors_name_the_problem(tmp_path):
    with pytest.raises(ScreenerError, match="sitk_stuff"):
        write_map(np.zeros((2, 2, 2), np.float32), {"spacing": [1, 1, 1]}, tmp_path / "a.nii.gz")
    props = _identity_properties((2, 2, 2), [[0, 2]] * 3)
    with pytest.raises(ScreenerError, match="2D map"):
        write_map(np.zeros((2, 2), np.float32), props, tmp_path / "b.nii.gz")
    write_map(np.ones((2, 2, 2), np.float32), props, tmp_path / "c.mha")  # the ending picks the format
    assert sitk.ReadImage(str(tmp_path / "c.mha")).GetOrigin() == (1.0, 2.0, 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mha"]  # no partial file left behind

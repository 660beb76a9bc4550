"""The teacher's targets: the multi-channel sliding window against the predictor, and the teacher-to-student grid
mapping against scipy's interpolation and against nnU-Net's own resampling of the same raw volume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from nnscreener.distill.targets import _axis_positions, resample_to_student, teacher_fields
from nnscreener.inference.predictor import ScreenerPredictor
from nnscreener.model import load_screener_model
from tests.helpers.distill_dataset import make_distill_dataset


def _props(bbox, crop):
    return {"bbox_used_for_cropping": bbox, "shape_after_cropping_and_before_resampling": crop}


@pytest.mark.parametrize("student_transpose", [(0, 1, 2), (2, 0, 1)])
def test_grid_mapping_matches_scipy_trilinear_interpolation(student_transpose):
    rng = np.random.default_rng(0)
    field = rng.standard_normal((2, 9, 11, 13)).astype(np.float32)  # teacher grid (identity transpose)
    teacher = _props([[3, 21], [2, 24], [5, 31]], (18, 22, 26))  # raw shape (z, y, x) = (25, 30, 40)
    raw_shape = (25, 30, 40)
    student_raw_axes = list(student_transpose)
    student_bbox = [[0, raw_shape[a]] for a in student_raw_axes]
    student_crop = [raw_shape[a] for a in student_raw_axes]
    student_shape = (14, 17, 12)
    student = _props(student_bbox, student_crop)
    out = resample_to_student(torch.from_numpy(field), teacher, (0, 1, 2), student, student_transpose, student_shape)
    # reference: every student voxel centre -> raw index -> teacher index, then scipy's order-1 interpolation
    grids = np.meshgrid(*[np.arange(n) for n in student_shape], indexing="ij")
    teacher_coords = [None] * 3
    for k, a in enumerate(student_raw_axes):
        raw = (grids[k] + 0.5) * student_crop[k] / student_shape[k] - 0.5
        teacher_coords[a] = (raw - teacher["bbox_used_for_cropping"][a][0] + 0.5) * field.shape[1 + a] / \
            teacher["shape_after_cropping_and_before_resampling"][a] - 0.5
    reference = np.stack([map_coordinates(c, teacher_coords, order=1, mode="nearest") for c in field])
    assert out.shape == (2, *student_shape)
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5)


def test_axis_positions_are_cell_centred():
    # a crop of 10 raw voxels resampled to 5: output voxel 0 covers raw 0..2, centre raw 0.5
    np.testing.assert_allclose(_axis_positions(5, 0, 10, 0, 10, 10), [0.5, 2.5, 4.5, 6.5, 8.5])
    # the same grid maps onto itself
    np.testing.assert_allclose(_axis_positions(7, 3, 12, 3, 12, 7), np.arange(7), atol=1e-12)


@pytest.fixture
def distill_dataset(nnunet_env, monkeypatch):
    return make_distill_dataset(nnunet_env, monkeypatch)


def test_teacher_map_channel_equals_the_predictors_map(distill_dataset):
    plans, folder = distill_dataset
    model, _ = load_screener_model(folder)
    channels = plans.config.preprocessing.channels  # the cpu preset keeps the HU window beside the CLAHE image
    data = torch.rand(channels, 14, 30, 25)
    fields = teacher_fields(model, data, plans.configuration_manager.patch_size, 0.5, "uniform", 3, True)
    reference = ScreenerPredictor(model, plans, progress=False, num_processes_preprocessing=0,
                                  num_processes_export=0, blending="uniform").predict_preprocessed(data)
    # map + the descriptor's 8 channels + the cpu preset's 8-bin histogram of each stored channel
    assert fields.shape == (1 + 8 + 8 * channels, 14, 30, 25)
    torch.testing.assert_close(fields[0], reference, rtol=1e-5, atol=1e-5)
    only_map = teacher_fields(model, data, plans.configuration_manager.patch_size, 0.5, "uniform", 3, False)
    torch.testing.assert_close(only_map, fields[:1])


def test_grid_mapping_agrees_with_nnunets_resampling_of_the_raw_volume(distill_dataset):
    """A smooth raw volume brought to the teacher's grid and to the student's grid by nnU-Net's own cropping and
    resampling: mapping the teacher's version must give the student's (inside the teacher's crop)."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from nnscreener.data.loaders import open_preprocessed_dataset
    from nnscreener.distill.preprocessing import preprocess_training_cases
    from nnscreener.distill.student import load_student_plans

    teacher, _ = distill_dataset
    student = load_student_plans("500", "nnUNetPlans", {"distill": {"teacher_plans": teacher.plans_name}})
    preprocess_training_cases(student)
    _, _, _, props_t = open_preprocessed_dataset(teacher.data_dir, ["case00"]).load_case("case00")
    data_s, _, _, props_s = open_preprocessed_dataset(student.data_dir, ["case00"]).load_case("case00")
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in props_t["shape_before_cropping"]],
                          indexing="ij")
    raw = (0.3 * z - 0.2 * y + 0.1 * x)[None]  # linear in the raw voxel index

    def to_grid(props, shape):
        (z0, z1), (y0, y1), (x0, x1) = props["bbox_used_for_cropping"]
        return resample_data_or_seg_to_shape(raw[:, z0:z1, y0:y1, x0:x1], shape, [1, 1, 1], [1, 1, 1],
                                             is_seg=False, order=1, force_separate_z=False)[0]

    teacher_grid = to_grid(props_t, np.asarray(open_preprocessed_dataset(
        teacher.data_dir, ["case00"]).load_case("case00")[0]).shape[1:])
    student_grid = to_grid(props_s, data_s.shape[1:])
    mapped = resample_to_student(torch.from_numpy(teacher_grid[None]).float(), props_t, (0, 1, 2), props_s,
                                 (0, 1, 2), data_s.shape[1:])[0].numpy()
    # student voxels whose centre lies inside the teacher's crop, half a teacher voxel away from its edges (outside
    # it the mapping holds the edge value: the teacher knows nothing there)
    n_t = teacher_grid.shape
    axes = [_axis_positions(n, props_s["bbox_used_for_cropping"][k][0],
                            props_s["shape_after_cropping_and_before_resampling"][k],
                            props_t["bbox_used_for_cropping"][k][0],
                            props_t["shape_after_cropping_and_before_resampling"][k], n_t[k])
            for k, n in enumerate(student_grid.shape)]
    inside = np.ix_(*[(t >= 0.5) & (t <= n - 1.5) for t, n in zip(axes, n_t)])
    assert mapped[inside].size > 0.15 * mapped.size
    np.testing.assert_allclose(mapped[inside], student_grid[inside], atol=1e-4)
    outside_y = axes[1] < 0  # student rows before the teacher's crop (y) hold the teacher's edge value
    assert outside_y.any()
    np.testing.assert_allclose(mapped[:, outside_y, :], mapped[:, [0], :].repeat(int(outside_y.sum()), axis=1),
                               atol=1e-6)

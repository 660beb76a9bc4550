import copy
import json
import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from nnscreener.errors import ScreenerError
from nnscreener.inference.input_files import InputCase
from nnscreener.inference.predictor import PREVIEW_FOLDER, SETTINGS_FILE, ScreenerPredictor, record_settings
from nnscreener.inference.sliding_window import blending_weights, iter_windows
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

PATCH_ZYX = (8, 12, 10)


class PointwiseModel(nn.Module):
    """A stand-in ScreenerModel (docs/design.md C9) whose map is a known per-voxel function, then average-pooled.

    map = x^2 + 0.01 * (z + 2 y + 3 x) with (z, y, x) the voxel's absolute position in the unpadded volume, so a
    wrong ``origin_zyx`` or a misplaced window shows up as a shifted ramp.
    """

    def __init__(self, pool_zyx: Tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.pool_zyx = pool_zyx
        self.calls = 0

    def anomaly_map(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, device=x.device) for s in x.shape[2:]], indexing="ij"))
        coords = grid[None] + origin_zyx[:, :, None, None, None]  # (B, 3, Z, Y, X) absolute voxel positions
        ramp = coords[:, 0:1] + 2 * coords[:, 1:2] + 3 * coords[:, 2:3]
        return F.avg_pool3d(x ** 2 + 0.01 * ramp, self.pool_zyx, self.pool_zyx)


def global_pointwise_map(data: np.ndarray) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s) for s in data.shape[1:]], indexing="ij")
    return data[0].astype(np.float64) ** 2 + 0.01 * (z + 2 * y + 3 * x)


@pytest.fixture
def plans(nnunet_env):
    """The fake dataset's cpu plans with a small patch (many windows on small volumes) and Screener's
    normalization (so the real preprocessing clips and rescales HU)."""
    plans = make_fake_preprocessed_dataset(nnunet_env, n_cases=1, shape_zyx=(8, 16, 16))
    raw = copy.deepcopy(plans.plans)
    configuration = raw["configurations"]["3d_fullres"]
    configuration["patch_size"] = list(PATCH_ZYX)
    configuration["normalization_schemes"] = ["ScreenerCTNormalization"]
    return dataclasses.replace(plans, plans=raw)


def _predictor(plans, model, **kwargs) -> ScreenerPredictor:
    kwargs.setdefault("num_processes_preprocessing", 0)
    kwargs.setdefault("num_processes_export", 0)
    return ScreenerPredictor(model, plans, "cpu", progress=False, **kwargs)


@pytest.mark.parametrize("shape_zyx", [(19, 27, 23), (8, 12, 10), (5, 30, 7), (3, 4, 6)])
@pytest.mark.parametrize("step", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("blending", ["uniform", "gaussian"])
def test_pointwise_model_reproduces_the_global_map(plans, shape_zyx, step, blending):
    data = np.random.default_rng(0).random((1, *shape_zyx), dtype=np.float32)
    predictor = _predictor(plans, PointwiseModel(), step_size=step, blending=blending, batch_size=3)
    result = predictor.predict_preprocessed(data)
    assert result.dtype == torch.float32 and tuple(result.shape) == shape_zyx
    np.testing.assert_allclose(result.numpy(), global_pointwise_map(data), rtol=1e-5, atol=1e-5)


def _slow_pooled_reference(model: PointwiseModel, data: np.ndarray, step: float, blending: str) -> np.ndarray:
    """Window by window: pad centred with zeros, run the model, upsample, weighted average in float64."""
    shape = np.array(data.shape[1:])
    padded_shape = np.maximum(shape, PATCH_ZYX)
    before = (padded_shape - shape) // 2
    padded = np.zeros((1, *padded_shape), dtype=np.float32)
    padded[(0, *[slice(b, b + s) for b, s in zip(before, shape)])] = data[0]
    weights = blending_weights(PATCH_ZYX, blending, "cpu").double().numpy()
    total = np.zeros(padded_shape)
    weight = np.zeros(padded_shape)
    for window in iter_windows(padded_shape, PATCH_ZYX, step):
        x = torch.from_numpy(padded[(slice(None), *window)][None].copy())
        origin = torch.tensor([[w.start - b for w, b in zip(window, before)]])
        pooled = model.anomaly_map(x, origin)
        up = F.interpolate(pooled, size=PATCH_ZYX, mode="trilinear", align_corners=False)[0, 0].double().numpy()
        total[window] += weights * up
        weight[window] += weights
    blended = total / weight
    return blended[tuple(slice(b, b + s) for b, s in zip(before, shape))]


@pytest.mark.parametrize("shape_zyx, step, blending", [((19, 27, 23), 0.5, "uniform"), ((11, 25, 9), 0.25, "gaussian"),
                                                       ((6, 10, 10), 0.5, "uniform")])
def test_pooled_model_matches_a_window_by_window_reference(plans, shape_zyx, step, blending):
    data = np.random.default_rng(1).random((1, *shape_zyx), dtype=np.float32)
    model = PointwiseModel(pool_zyx=(2, 3, 2))
    result = _predictor(plans, model, step_size=step, blending=blending, batch_size=4).predict_preprocessed(data)
    n_windows = len(list(iter_windows(np.maximum(shape_zyx, PATCH_ZYX), PATCH_ZYX, step)))
    assert model.calls == math.ceil(n_windows / 4)  # batched: one forward per 4 patches
    expected = _slow_pooled_reference(model, data, step, blending)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_options_default_to_the_plans_and_bad_values_are_rejected(plans):
    predictor = _predictor(plans, PointwiseModel())
    inference = plans.config.inference
    assert (predictor.step_size, predictor.blending, predictor.batch_size) == (
        inference.step_size, inference.blending, inference.batch_size)
    with pytest.raises(ScreenerError, match="step size"):
        _predictor(plans, PointwiseModel(), step_size=0.0)
    with pytest.raises(ScreenerError, match="blending 'max'"):
        _predictor(plans, PointwiseModel(), blending="max")
    with pytest.raises(ScreenerError, match="batch size"):
        _predictor(plans, PointwiseModel(), batch_size=0)
    with pytest.raises(ScreenerError, match=r"\(1, z, y, x\)"):
        predictor.predict_preprocessed(np.zeros((8, 8, 8), np.float32))


class SecondChannelModel(PointwiseModel):
    """A stand-in that reads two channels (as a ScreenerModel with a kept HU window) and maps the second."""

    image_channels = 2

    def anomaly_map(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 2
        return super().anomaly_map(x[:, 1:], origin_zyx)


def test_a_model_reads_as_many_channels_as_it_says_and_more_are_needed_than_the_data_has(plans):
    """docs/design.md C9: a model without ``image_channels`` gets channel 0 of (C, z, y, x) data; one with 2 gets
    both; too few channels for the model is refused with the reason."""
    data = np.random.default_rng(1).random((2, 9, 13, 11), dtype=np.float32)
    first = _predictor(plans, PointwiseModel()).predict_preprocessed(data)
    np.testing.assert_allclose(first.numpy(), global_pointwise_map(data[:1]), rtol=1e-5, atol=1e-5)
    second = _predictor(plans, SecondChannelModel()).predict_preprocessed(data)
    np.testing.assert_allclose(second.numpy(), global_pointwise_map(data[1:]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ScreenerError, match=r"\(2, z, y, x\) volume.*keep_window_channel"):
        _predictor(plans, SecondChannelModel()).predict_preprocessed(data[:1])


def test_a_missing_model_folder_or_checkpoint_is_named(tmp_path):
    with pytest.raises(ScreenerError, match="no trained density model at .*density__x"):
        ScreenerPredictor.from_density_folder(tmp_path / "density__x", "cpu")
    (tmp_path / "checkpoint_latest.pth").write_bytes(b"")
    with pytest.raises(ScreenerError, match=r"checkpoint_final\.pth does not exist .*checkpoint_latest\.pth"):
        ScreenerPredictor.from_density_folder(tmp_path, "cpu")


# ---------------------------------------------------------------- raw scans end to end (real preprocessing)
SPACING_XYZ = (2.5, 2.5, 4.0)
ORIGIN = (-60.0, 20.5, -33.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a 90 degree in-plane rotation


def write_ct_phantom(path: Path, seed: int, shape_zyx: Sequence[int] = (20, 48, 44)) -> np.ndarray:
    """An air-filled CT (HU) with an ellipsoid body, a lung and a dense blob; returns its (z, y, x) body."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    body = (z / 0.95) ** 2 + (y / 0.7) ** 2 + (x / 0.8) ** 2 <= 1
    image = np.full(shape_zyx, -1000.0, dtype=np.float32)
    image[body] = 40.0 + rng.normal(0, 10, size=int(body.sum()))
    image[((y + 0.1) / 0.3) ** 2 + ((x - 0.3) / 0.3) ** 2 + (z / 0.6) ** 2 <= 1] = -850.0
    image[((y - 0.2) / 0.15) ** 2 + ((x + 0.3) / 0.15) ** 2 + (z / 0.3) ** 2 <= 1] = 250.0
    itk = sitk.GetImageFromArray(image.astype(np.int16))
    itk.SetSpacing(SPACING_XYZ)
    itk.SetOrigin(ORIGIN)
    itk.SetDirection(DIRECTION)
    sitk.WriteImage(itk, str(path))
    return body


@pytest.fixture
def scans(tmp_path) -> Path:
    """Two good scans, one unreadable file and one 2D image."""
    folder = tmp_path / "scans"
    folder.mkdir()
    write_ct_phantom(folder / "good1_0000.nii.gz", seed=1)
    write_ct_phantom(folder / "good2_0000.nii.gz", seed=2, shape_zyx=(18, 40, 52))
    (folder / "broken_0000.nii.gz").write_bytes(b"this is not a NIfTI file")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 30), np.int16)), str(folder / "flat_0000.nii.gz"))
    return folder


def _check_output_matches_input_geometry(output: Path, source: Path) -> np.ndarray:
    written, original = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert written.GetPixelID() == sitk.sitkFloat32
    assert written.GetSize() == original.GetSize()
    assert written.GetSpacing() == original.GetSpacing()
    assert written.GetOrigin() == original.GetOrigin()
    assert written.GetDirection() == original.GetDirection()
    return sitk.GetArrayFromImage(written)


def test_predict_from_files_writes_maps_reports_bad_cases_and_skips_finished_ones(plans, scans, tmp_path):
    out = tmp_path / "maps"
    predictor = _predictor(plans, PointwiseModel(pool_zyx=(2, 3, 2)), batch_size=2)
    summary = predictor.predict_from_files(scans, out, save_png=True)

    assert sorted(summary.predicted) == ["good1", "good2"]
    assert sorted(summary.failed) == ["broken", "flat"]
    assert "broken_0000.nii.gz" in summary.failed["broken"] and "cannot read" in summary.failed["broken"]
    assert "flat_0000.nii.gz" in summary.failed["flat"] and "3D" in summary.failed["flat"]
    assert "FAILED broken" in summary.report() and "2 predicted" in summary.report()
    for case in ("good1", "good2"):
        result = _check_output_matches_input_geometry(out / f"{case}.nii.gz", scans / f"{case}_0000.nii.gz")
        assert result[0, 0, 0] == result.min()  # the corner is outside air
        assert np.ptp(result) > 0
        assert (out / PREVIEW_FOLDER / f"{case}_axial.png").stat().st_size > 1000
        assert (out / PREVIEW_FOLDER / f"{case}_coronal.png").is_file()
    assert not (out / "broken.nii.gz").exists() and (out / SETTINGS_FILE).is_file()

    # predict_case gives exactly what was written
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "good1.nii.gz")))
    np.testing.assert_array_equal(predictor.predict_case([scans / "good1_0000.nii.gz"]), written)

    # a rerun skips finished maps (never touching them, nor the settings that describe them) and retries the
    # failed cases
    os.utime(out / "good1.nii.gz", (0, 0))
    settings = (out / SETTINGS_FILE).read_bytes()
    assert [run["cases"] for run in json.loads(settings)["runs"]] == [["good1", "good2"]]
    again = _predictor(plans, PointwiseModel(pool_zyx=(2, 3, 2)), batch_size=3).predict_from_files(scans, out)
    assert sorted(again.skipped) == ["good1", "good2"] and again.predicted == []
    assert sorted(again.failed) == ["broken", "flat"]
    assert (out / "good1.nii.gz").stat().st_mtime == 0 and (out / SETTINGS_FILE).read_bytes() == settings
    redone = predictor.predict_from_files([InputCase("good1", (str(scans / "good1_0000.nii.gz"),))], out,
                                          overwrite=True)
    assert redone.predicted == ["good1"] and (out / "good1.nii.gz").stat().st_mtime > 0
    assert (out / SETTINGS_FILE).read_bytes() == settings  # same settings: the same record
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "good1.nii.gz"))), written)


def test_worker_processes_give_the_same_maps_and_parts_split_the_job(plans, scans, tmp_path):
    inline = _predictor(plans, PointwiseModel(pool_zyx=(2, 3, 2)))
    workers = _predictor(plans, PointwiseModel(pool_zyx=(2, 3, 2)), num_processes_preprocessing=1,
                         num_processes_export=1)
    first = inline.predict_from_files(scans, tmp_path / "inline", num_parts=2, part_id=0)
    second = workers.predict_from_files(scans, tmp_path / "workers", num_parts=2, part_id=1)
    # sorted cases: broken, flat, good1, good2 -> part 0 = broken, good1; part 1 = flat, good2
    assert (first.predicted, sorted(first.failed)) == (["good1"], ["broken"])
    assert (second.predicted, sorted(second.failed)) == (["good2"], ["flat"])
    from_workers = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "workers" / "good2.nii.gz")))
    np.testing.assert_array_equal(inline.predict_case([scans / "good2_0000.nii.gz"]), from_workers)


def test_settings_record_which_settings_wrote_which_maps(tmp_path):
    path = tmp_path / SETTINGS_FILE
    record_settings(path, {"step_size": 0.5}, [])
    assert not path.exists()  # nothing written, nothing recorded
    record_settings(path, {"step_size": 0.5, "patch": (2, 3)}, ["a", "b", "c"])
    record_settings(path, {"step_size": 0.25, "patch": (2, 3)}, ["b"])
    record_settings(path, {"step_size": 0.5, "patch": (2, 3)}, ["d"])
    runs = json.loads(path.read_text())["runs"]
    assert runs == [{"step_size": 0.5, "patch": [2, 3], "cases": ["a", "c", "d"]},
                    {"step_size": 0.25, "patch": [2, 3], "cases": ["b"]}]
    record_settings(path, {"step_size": 0.125}, ["a", "b", "c", "d"])  # every map replaced: one run remains
    assert json.loads(path.read_text())["runs"] == [{"step_size": 0.125, "cases": ["a", "b", "c", "d"]}]

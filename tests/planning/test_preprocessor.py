"""ScreenerPreprocessor / preprocess_case on tiny CT phantoms, against nnU-Net's own functions as references.

Also hosts the phantom-dataset helpers used by test_planner.py and tests/cli/test_plan_and_preprocess.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from nnscreener.config import get_preset, merge
from nnscreener.errors import ScreenerError
from nnscreener.plans import load_plans
from nnscreener.planning.body_mask import body_mask_from_hu
from nnscreener.planning.clahe import clahe_3d
from nnscreener.planning.cropping import crop_to_bbox, dense_foreground_bbox
from nnscreener.planning.normalization import ScreenerCTNormalization
from nnscreener.planning.preprocessor import BODY_LABEL, ScreenerPreprocessor, preprocess_case

PHANTOM_SHAPE_ZYX = (20, 40, 40)
PHANTOM_SPACING_XYZ = (1.5, 1.5, 2.5)  # mm


def phantom_hu(shape_zyx: Tuple[int, int, int] = PHANTOM_SHAPE_ZYX, seed: int = 0) -> np.ndarray:
    """(z, y, x) int16 HU: air, an elliptic soft-tissue body spanning all slices with a lung air pocket, and a
    one-voxel table under it, plus noise."""
    rng = np.random.default_rng(seed)
    Z, Y, X = shape_zyx
    _, y, x = np.mgrid[:Z, :Y, :X]
    img = np.full(shape_zyx, -1000.0)
    img[((y - 0.45 * Y) / (0.33 * Y)) ** 2 + ((x - X / 2) / (0.4 * X)) ** 2 <= 1] = 40.0
    img[((y - 0.42 * Y) / (0.12 * Y)) ** 2 + ((x - 0.35 * X) / (0.1 * X)) ** 2 <= 1] = -850.0
    img[:, int(0.85 * Y), 3:X - 3] = 200.0
    return (img + rng.normal(0, 10, img.shape)).astype(np.int16)


def write_ct(path: Path, hu_zyx: np.ndarray, spacing_xyz: Sequence[float] = PHANTOM_SPACING_XYZ) -> Path:
    image = sitk.GetImageFromArray(hu_zyx)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin((10.0, -20.0, 5.0))
    sitk.WriteImage(image, str(path))
    return Path(path)


def write_phantom_raw_dataset(raw_root: Path, dataset_id: int = 500, n_cases: int = 3,
                              dataset_json: Dict = None) -> Path:
    """An unlabeled nnU-Net raw dataset ``Dataset{id}_Phantom`` (imagesTr only) of ``n_cases`` phantoms."""
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_Phantom"
    (folder / "imagesTr").mkdir(parents=True)
    for i in range(n_cases):
        write_ct(folder / "imagesTr" / f"case{i:02d}_0000.nii.gz", phantom_hu(seed=i))
    content = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1},
               "numTraining": n_cases, "file_ending": ".nii.gz"}
    content.update(dataset_json or {})
    (folder / "dataset.json").write_text(json.dumps(content))
    return folder


def plan_phantom_dataset(env: dict, preset: str = "cpu", overrides: Dict = None, dataset_id: int = 500):
    """Raw phantoms -> body masks and derived dataset.json -> hand-written fingerprint -> ScreenerPlanner, all in
    this process (no nnU-Net worker pools). Returns the planner's plans dict."""
    from nnscreener.planning.planner import ScreenerPlanner
    from nnscreener.planning.unlabeled import (BODY_MASK_FOLDER, derived_dataset_json, list_training_cases,
                                               load_raw_dataset_json, write_body_masks, write_json_atomically)

    raw = write_phantom_raw_dataset(env["nnUNet_raw"], dataset_id)
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    raw_json = load_raw_dataset_json(raw)
    cases = list_training_cases(raw, raw_json)
    masks, _ = write_body_masks(cases, pre / BODY_MASK_FOLDER, raw_json)
    write_json_atomically(derived_dataset_json(raw_json, cases, masks), pre / "dataset.json")
    spacing_zyx = list(reversed(PHANTOM_SPACING_XYZ))
    fingerprint = {
        "spacings": [spacing_zyx] * len(cases), "shapes_after_crop": [list(PHANTOM_SHAPE_ZYX)] * len(cases),
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "median": 40.0, "std": 300.0,
                                                              "min": -900.0, "max": 80.0, "percentile_00_5": -870.0,
                                                              "percentile_99_5": 70.0}},
        "median_relative_size_after_cropping": 1.0,
    }
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    config = merge(get_preset(preset), overrides or {})
    return ScreenerPlanner(dataset_id, config=config).plan_experiment()


@pytest.fixture
def planned(nnunet_env):
    plans = plan_phantom_dataset(nnunet_env)
    return load_plans(500, plans["plans_name"]), nnunet_env


def _image(env, case: str = "case00") -> str:
    return str(Path(env["nnUNet_raw"]) / "Dataset500_Phantom" / "imagesTr" / f"{case}_0000.nii.gz")


def test_normalization_clips_window_and_rescales_to_unit_range():
    hu = np.array([-3000.0, -1000.0, -350.0, 300.0, 2000.0], dtype=np.float32)
    out = ScreenerCTNormalization(clip_hu=(-1000, 300)).run(hu.copy())
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert out.dtype == np.float32
    with pytest.raises(ScreenerError, match="clip_hu"):
        ScreenerCTNormalization(clip_hu=(300, -1000))


def test_intensities_are_resampled_clipped_hu_then_clahe(planned):
    """Reference: nnU-Net's own resampling of the cropped HU array, then clip/rescale, then CLAHE."""
    plans, env = planned
    hu = sitk.GetArrayFromImage(sitk.ReadImage(_image(env))).astype(np.float32)[None]
    spacing = list(reversed(PHANTOM_SPACING_XYZ))
    cm = plans.configuration_manager
    cfg = plans.config.preprocessing
    cropped = crop_to_bbox(hu, dense_foreground_bbox(hu[0], spacing, cfg.body_threshold_hu, cfg.body_block_mm))
    shape = compute_new_shape(cropped.shape[1:], spacing, cm.spacing)
    expected = np.clip((cm.resampling_fn_data(cropped, shape, spacing, cm.spacing) + 1000.0) / 1300.0, 0, 1)

    plans = plans.with_overrides({"preprocessing": {"keep_window_channel": False}})  # the network input alone
    no_clahe = preprocess_case([_image(env)], plans.with_overrides({"preprocessing": {"use_clahe": False}}))
    np.testing.assert_allclose(no_clahe.data, expected, atol=1e-6)
    with_clahe = preprocess_case([_image(env)], plans)
    np.testing.assert_allclose(with_clahe.data[0], clahe_3d(no_clahe.data[0], cfg.clahe_clip_limit), atol=1e-6)
    assert with_clahe.data.dtype == np.float32 and with_clahe.data.min() == 0.0 and with_clahe.data.max() == 1.0


def test_kept_window_channel_is_the_input_before_clahe(planned):
    """preprocessing.keep_window_channel: channel 0 stays the CLAHE input, channel 1 is the window without CLAHE."""
    plans, env = planned
    plans = plans.with_overrides({"preprocessing": {"keep_window_channel": False}})
    with_clahe = preprocess_case([_image(env)], plans)
    no_clahe = preprocess_case([_image(env)], plans.with_overrides({"preprocessing": {"use_clahe": False}}))
    kept = preprocess_case([_image(env)], plans.with_overrides({"preprocessing": {"keep_window_channel": True}}))
    assert kept.data.shape == (2, *with_clahe.data.shape[1:]) and kept.data.dtype == np.float32
    np.testing.assert_array_equal(kept.data[:1], with_clahe.data)
    np.testing.assert_array_equal(kept.data[1:], no_clahe.data)
    assert not np.array_equal(kept.data[0], kept.data[1])
    np.testing.assert_array_equal(kept.body_mask, with_clahe.body_mask)


def test_geometry_properties_invert_with_nnunet_functions(planned):
    plans, env = planned
    case = preprocess_case([_image(env)], plans)
    props = case.properties
    cm = plans.configuration_manager
    spacing = list(reversed(PHANTOM_SPACING_XYZ))
    assert tuple(props["shape_before_cropping"]) == PHANTOM_SHAPE_ZYX
    np.testing.assert_allclose(props["spacing"], spacing)
    assert props["sitk_stuff"]["origin"] == (10.0, -20.0, 5.0)
    crop_shape = tuple(b - a for a, b in props["bbox_used_for_cropping"])
    assert tuple(props["shape_after_cropping_and_before_resampling"]) == crop_shape
    assert case.data.shape[1:] == tuple(compute_new_shape(crop_shape, spacing, cm.spacing))
    assert case.body_mask.shape == case.data.shape[1:] and case.body_mask.dtype == bool
    assert "class_locations" not in props

    # back to the input's geometry as nnU-Net's export does: resample, then insert the crop into the full shape
    back = cm.resampling_fn_probabilities(case.body_mask[None].astype(np.float32),
                                          props["shape_after_cropping_and_before_resampling"], cm.spacing, spacing)
    full = insert_crop_into_image(np.zeros((1, *props["shape_before_cropping"]), np.float32), back,
                                  props["bbox_used_for_cropping"])[0] > 0.5
    hu = sitk.GetArrayFromImage(sitk.ReadImage(_image(env)))
    reference = body_mask_from_hu(hu.astype(np.float32))
    dice = 2 * np.sum(full & reference) / (full.sum() + reference.sum())
    assert dice > 0.85, dice
    assert not full[:, int(0.85 * PHANTOM_SHAPE_ZYX[1])].any()  # the table is outside the body


def test_training_cases_get_body_class_locations(planned):
    plans, env = planned
    pre = ScreenerPreprocessor(config=plans.config.preprocessing)
    data, seg, props = pre.run_case([_image(env)], "ignored-label-path", plans.plans_manager,
                                    plans.configuration_manager, plans.dataset_json)
    assert seg.dtype == np.int16 and seg.shape == (1, *data.shape[1:]) and set(np.unique(seg)) == {0, BODY_LABEL}
    locations = np.asarray(props["class_locations"][BODY_LABEL])
    assert len(locations) > 0 and np.all(seg[tuple(locations.T)] == BODY_LABEL)


def test_run_case_npy_leaves_the_input_untouched_when_no_resampling_is_needed(planned):
    plans, _ = planned
    target = plans.configuration_manager.spacing
    hu = phantom_hu((16, 24, 24)).astype(np.float32)[None]
    before = hu.copy()
    props = {"spacing": list(target)}
    data, seg, _ = ScreenerPreprocessor(config=plans.config.preprocessing).run_case_npy(
        hu, None, props, plans.plans_manager, plans.configuration_manager, plans.dataset_json)
    np.testing.assert_array_equal(hu, before)
    assert 0.0 <= data.min() and data.max() <= 1.0


@pytest.mark.parametrize("kind, message", [
    ("nan", "NaN"), ("2d", "not a single-channel 3D"), ("missing", "missing image file"),
    ("garbage", "cannot read image"), ("tiny", "at least 8 voxels"), ("air", "no dense foreground"),
])
def test_bad_images_raise_errors_naming_the_file(planned, tmp_path, kind, message):
    plans, _ = planned
    # SimpleITK's NIfTI reader turns NaN into 0, so the NaN case uses MetaImage, which keeps it
    path = tmp_path / f"bad_{kind}_0000{'.mha' if kind == 'nan' else '.nii.gz'}"
    if kind == "nan":
        hu = phantom_hu().astype(np.float32)
        hu[3, 4, 5] = np.nan
        write_ct(path, hu)
    elif kind == "2d":
        write_ct(path, phantom_hu()[10], PHANTOM_SPACING_XYZ[:2])
    elif kind == "garbage":
        path.write_bytes(b"this is not a NIfTI file")
    elif kind == "tiny":  # air and soft tissue, as a CT has, but too small
        tiny = np.full((6, 12, 12), 40, np.int16)
        tiny[:, :3] = -1000
        write_ct(path, tiny, (1.0, 1.0, 1.0))
    elif kind == "air":  # soft-tissue voxels scattered in air: CT-like values, but no dense block
        air = np.full((20, 40, 40), -1000, np.int16)
        air[::4, ::4, ::4] = 40
        write_ct(path, air)
    with pytest.raises(ScreenerError, match=message) as info:
        preprocess_case([str(path)], plans)
    assert str(path) in str(info.value)


def test_non_ct_plans_are_rejected(planned):
    plans, env = planned
    plans.dataset_json = {**plans.dataset_json, "channel_names": {"0": "MRI"}}
    with pytest.raises(ScreenerError, match="single CT channel"):
        preprocess_case([_image(env)], plans)


@pytest.mark.parametrize("spacing_xyz", [(300.0, 300.0, 300.0), (1.5, 1.5, 30.0), (0.01, 1.5, 2.5)])
def test_spacing_far_outside_ct_is_refused_before_resampling(planned, tmp_path, spacing_xyz):
    plans, _ = planned
    path = write_ct(tmp_path / "huge_0000.nii.gz", phantom_hu(), spacing_xyz)
    with pytest.raises(ScreenerError, match="outside CT's range") as info:
        preprocess_case([str(path)], plans)
    assert str(path) in str(info.value)


def test_resampled_size_is_bounded_before_any_allocation(planned, tmp_path, monkeypatch):
    from nnscreener.planning import preprocessor

    plans, _ = planned
    path = write_ct(tmp_path / "big_0000.nii.gz", phantom_hu(), (10.0, 10.0, 10.0))
    monkeypatch.setattr(preprocessor, "MAX_PREPROCESSED_VOXELS", 10_000)
    with pytest.raises(ScreenerError, match="more than the limit of 10,000") as info:
        preprocess_case([str(path)], plans)
    assert str(path) in str(info.value)

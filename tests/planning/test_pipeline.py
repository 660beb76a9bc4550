"""plan_and_preprocess end to end on the built-in synthetic CT (cpu size) plus a tiny phantom, its rollback of a
failed rerun, and its error messages on tiny phantom datasets."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnscreener.config import get_preset, merge, parse_set_overrides
from nnscreener.errors import ScreenerError
from nnscreener.planning.pipeline import plan_and_preprocess
from nnscreener.plans import load_plans
from tests.planning.test_preprocessor import phantom_hu, write_ct, write_phantom_raw_dataset


def _hashes(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


CPU = get_preset("cpu")


def _error(**kwargs) -> str:
    """The message of the ScreenerError that plan_and_preprocess(500, ...) raises."""
    with pytest.raises(ScreenerError) as info:
        plan_and_preprocess(500, **kwargs)
    return str(info.value)


def _synthetic_raw_dataset(env) -> Path:
    """Two training and one test case of the built-in synthetic CT (cpu size), plus a phantom training case
    smaller than the cpu patch."""
    from nnscreener.synthetic.generator import generate_dataset

    raw = generate_dataset(Path(env["nnUNet_raw"]), 500, n_train=2, n_test=1, size="cpu", seed=0,
                           num_processes=1, progress=False)
    write_ct(raw / "imagesTr" / "tiny_0000.nii.gz", phantom_hu())
    content = json.loads((raw / "dataset.json").read_text())
    content["numTraining"] += 1
    (raw / "dataset.json").write_text(json.dumps(content))
    return raw


def test_plan_and_preprocess_end_to_end(nnunet_env):
    raw = _synthetic_raw_dataset(nnunet_env)
    raw_labels = json.loads((raw / "dataset.json").read_text())["labels"]
    before = _hashes(raw)
    plans_path = plan_and_preprocess(500, CPU, num_processes=1, verify_dataset_integrity=True)
    assert _hashes(raw) == before, "the raw dataset folder was modified"

    pre_root = Path(nnunet_env["nnUNet_preprocessed"])
    assert [p.name for p in pre_root.iterdir()] == [raw.name]  # no staging folder left behind
    plans = load_plans(500, "nnScreenerPlans_cpu")
    assert plans_path == plans.preprocessed_dir / "nnScreenerPlans_cpu.json"
    assert plans.configuration_manager.spacing == [4.5, 3.0, 3.0]
    assert plans.dataset_json["labels"] == {"background": 0, "body": 1}
    assert plans.dataset_json["raw_labels"] == raw_labels

    dataset = nnUNetDatasetBlosc2(str(plans.data_dir))
    assert sorted(dataset.identifiers) == ["tiny", "train_0000", "train_0001"]
    for key in dataset.identifiers:
        data, seg, _, props = dataset.load_case(key)
        data, seg = np.asarray(data[:]), np.asarray(seg[:])
        assert data.dtype == np.float32 and seg.dtype == np.int16 and seg.shape == (1, *data.shape[1:])
        assert data.shape[0] == CPU.preprocessing.channels and data.min() == 0.0 and data.max() == 1.0
        assert set(np.unique(seg)) == {0, 1} and 1 in props["class_locations"]
        assert seg.mean() > 0.05  # mostly body: the crop hugs it
    data, _, _, props = dataset.load_case("tiny")
    assert tuple(props["shape_before_cropping"]) == (20, 40, 40)
    assert data.shape[1] < 32  # smaller than the cpu patch (32, 48, 48) in z: kept, not padded

    # a failing rerun (a patch nnU-Net's UNet cannot take) leaves the previous results untouched
    plans_file = plans.preprocessed_dir / "nnScreenerPlans_cpu.json"
    snapshot = _hashes(plans.preprocessed_dir)
    bad_patch = merge(CPU, parse_set_overrides(["network.patch_size_xyz=50,48,32"]))
    assert "patch_size_xyz" in _error(config=bad_patch, num_processes=1)
    assert _hashes(plans.preprocessed_dir) == snapshot and plans_file.is_file()
    assert [p.name for p in pre_root.iterdir()] == [raw.name]


def test_a_kept_window_channel_is_stored_beside_the_clahe_image(nnunet_env):
    """preprocessing.keep_window_channel through the whole pipeline (nnU-Net's preprocessing and blosc2 files): the
    stored data has two channels, channel 0 the CLAHE of channel 1 (docs/design.md C3)."""
    from nnscreener.planning.clahe import clahe_3d

    write_phantom_raw_dataset(nnunet_env["nnUNet_raw"], n_cases=2)
    config = merge(CPU, parse_set_overrides(["preprocessing.keep_window_channel=true"]))
    plan_and_preprocess(500, config, num_processes=1, plans_name="nnScreenerPlans_cpu_window")
    plans = load_plans(500, "nnScreenerPlans_cpu_window")
    assert plans.config.preprocessing.channels == 2
    dataset = nnUNetDatasetBlosc2(str(plans.data_dir))
    for key in dataset.identifiers:
        data, seg, _, _ = dataset.load_case(key)
        data = np.asarray(data[:])
        assert data.shape == (2, *seg.shape[1:]) and data.dtype == np.float32
        cfg = plans.config.preprocessing
        np.testing.assert_allclose(data[0], clahe_3d(data[1], cfg.clahe_clip_limit, nbins=cfg.clahe_nbins), atol=1e-6)
        assert not np.array_equal(data[0], data[1])


def _assert_nothing_written(env):
    assert list(Path(env["nnUNet_preprocessed"]).iterdir()) == []


def test_unknown_dataset_id(nnunet_env):
    with pytest.raises(ScreenerError, match="'123' was not found"):
        plan_and_preprocess("123")


def test_unset_environment_variable(nnunet_env, monkeypatch):
    write_phantom_raw_dataset(nnunet_env["nnUNet_raw"])
    monkeypatch.delenv("nnUNet_preprocessed")
    assert "nnUNet_preprocessed is not set" in _error()


def test_non_ct_channel(nnunet_env):
    raw = write_phantom_raw_dataset(nnunet_env["nnUNet_raw"], dataset_json={"channel_names": {"0": "T1"}})
    line = _error(num_processes=1)
    assert "single CT channel" in line and str(raw / "dataset.json") in line
    _assert_nothing_written(nnunet_env)


def test_missing_dataset_json_key(nnunet_env):
    raw = write_phantom_raw_dataset(nnunet_env["nnUNet_raw"])
    content = json.loads((raw / "dataset.json").read_text())
    del content["file_ending"]
    (raw / "dataset.json").write_text(json.dumps(content))
    assert "file_ending" in _error()


def test_nan_image_is_named_and_nothing_is_written(nnunet_env):
    raw = write_phantom_raw_dataset(nnunet_env["nnUNet_raw"], n_cases=0,
                                    dataset_json={"file_ending": ".mha", "numTraining": 2})
    write_ct(raw / "imagesTr" / "good_0000.mha", phantom_hu())
    bad = phantom_hu().astype(np.float32)
    bad[5, 5, 5] = np.nan
    write_ct(raw / "imagesTr" / "zz_nan_0000.mha", bad)  # sorted last: the good case's mask is written first
    before = _hashes(raw)
    line = _error(config=CPU, num_processes=1)
    assert "NaN" in line and str(raw / "imagesTr" / "zz_nan_0000.mha") in line
    _assert_nothing_written(nnunet_env)
    assert _hashes(raw) == before


def test_unreadable_image_is_named(nnunet_env):
    raw = write_phantom_raw_dataset(nnunet_env["nnUNet_raw"])
    broken = raw / "imagesTr" / "case01_0000.nii.gz"
    broken.write_bytes(b"not an image")
    assert f"cannot read image {broken}" in _error(num_processes=1)
    _assert_nothing_written(nnunet_env)


def test_missing_image_listed_in_dataset_json_is_named(nnunet_env):
    raw = write_phantom_raw_dataset(nnunet_env["nnUNet_raw"], n_cases=1, dataset_json={
        "numTraining": 2,
        "dataset": {"case00": {"images": ["imagesTr/case00_0000.nii.gz"]},
                    "gone": {"images": ["imagesTr/gone_0000.nii.gz"]}},
    })
    assert f"missing image file {raw / 'imagesTr' / 'gone_0000.nii.gz'}" in _error(num_processes=1)
    _assert_nothing_written(nnunet_env)


def test_numtraining_mismatch_is_reported(nnunet_env):
    write_phantom_raw_dataset(nnunet_env["nnUNet_raw"], dataset_json={"numTraining": 5})
    assert "numTraining=5" in _error()


def test_truncated_image_is_named_and_nothing_is_written(nnunet_env):
    raw = write_phantom_raw_dataset(nnunet_env["nnUNet_raw"])
    cut = raw / "imagesTr" / "case02_0000.nii.gz"
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    line = _error(config=CPU, num_processes=1)
    assert f"cannot read image {cut}: truncated" in line
    _assert_nothing_written(nnunet_env)


def test_non_ct_image_is_named_unless_allowed(nnunet_env):
    raw = write_phantom_raw_dataset(nnunet_env["nnUNet_raw"], n_cases=1,
                                    dataset_json={"file_ending": ".nii.gz", "numTraining": 2})
    photo = np.clip(phantom_hu().astype(np.int32) // 8 + 128, 0, 255).astype(np.uint8)
    write_ct(raw / "imagesTr" / "photo_0000.nii.gz", photo)
    line = _error(config=CPU, num_processes=1)
    assert f"{raw / 'imagesTr' / 'photo_0000.nii.gz'} does not look like a CT" in line and "8-bit" in line
    _assert_nothing_written(nnunet_env)
    from nnscreener.planning.pipeline import load_raw_dataset, stage_inputs, staging_for

    raw_json, cases = load_raw_dataset(raw.name)
    staging = staging_for(raw.name, clean=True)
    stage_inputs(staging, raw_json, cases, CPU, 1, clean=True, allow_non_ct=True)  # the body masks are written
    assert (staging.mask_dir / "photo.nii.gz").is_file()


def test_staging_folders_of_dead_runs_are_removed_and_the_final_plans_path_is_printed(nnunet_env, capsys):
    import subprocess
    import sys

    from nnscreener.planning.pipeline import STAGING_PREFIX

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = Path(nnunet_env["nnUNet_preprocessed"])
    stale = root / f"{STAGING_PREFIX}{int(dead.stdout)}_Dataset500_Phantom"
    live = root / f"{STAGING_PREFIX}1_Dataset501_Other"  # pid 1 is always alive
    for folder in (stale, live):
        (folder / "Dataset500_Phantom").mkdir(parents=True)
    write_phantom_raw_dataset(nnunet_env["nnUNet_raw"])
    plans_path = plan_and_preprocess(500, CPU, num_processes=1)
    assert not stale.exists() and live.is_dir()
    out = capsys.readouterr().out
    assert f"Plans: {plans_path}" in out and STAGING_PREFIX not in out.replace(f"Removed {stale}", "")
    assert plans_path == root / "Dataset500_Phantom" / "nnScreenerPlans_cpu.json" and plans_path.is_file()

"""The distill stage on a tiny phantom dataset: the target cache (reuse, redo of incomplete cases, a new teacher),
its statistics, the loss against slow references, map+features, determinism and ``--c``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from nnscreener import paths
from nnscreener.checkpoints import FINAL_CHECKPOINT, PRETRAINED_WEIGHTS, load_checkpoint, load_distill_checkpoint
from nnscreener.data.loaders import open_preprocessed_dataset
from nnscreener.distill.cache import STATS_FILE, TEACHER_FILE, build_target_cache
from nnscreener.distill.loader import DistillPatchDataLoader
from nnscreener.distill.preprocessing import preprocess_training_cases
from nnscreener.distill.student import load_student_plans
from nnscreener.trainers.distill import DistillTrainer, deep_supervision_weights, masked_mse, reduce_to
from tests.helpers.distill_dataset import STUDENT_PLANS, make_distill_dataset, train_tiny_student, write_teacher


@pytest.fixture
def teacher(nnunet_env, monkeypatch):
    plans, _ = make_distill_dataset(nnunet_env, monkeypatch)
    return plans


def _student(teacher, targets: str = "map"):
    overrides = {"distill": {"teacher_plans": teacher.plans_name, "targets": targets},
                 "density": {"condition": "none", "density": "gaussian"}}
    plans = load_student_plans("500", STUDENT_PLANS, overrides)
    preprocess_training_cases(plans)
    return plans, DistillTrainer.variant_for(plans.config)


def test_targets_are_cached_reused_and_incomplete_cases_redone(teacher, monkeypatch):
    plans, variant = _student(teacher)
    cache = build_target_cache(plans, variant)
    cases = ["case00", "case01", "case02"]
    assert cache.missing(cases) == [] and (cache.folder / STATS_FILE).is_file()
    assert cache.folder.parent == plans.preprocessed_dir  # under nnUNet_preprocessed, never the raw folder
    first = {c: np.array(cache.load(c)) for c in cases}
    student_case = open_preprocessed_dataset(plans.data_dir, ["case00"]).load_case("case00")[0]
    assert first["case00"].shape == (1, *np.asarray(student_case).shape[1:])
    stamps = {c: cache.path(c).stat().st_mtime_ns for c in cases}

    cache.path("case01").unlink()  # killed before case01 was finished, with a partial file left behind
    (cache.folder / ".partial_case01.npy").write_bytes(b"half")
    build_target_cache(plans, variant)
    assert {c: cache.path(c).stat().st_mtime_ns for c in ("case00", "case02")} == \
        {c: stamps[c] for c in ("case00", "case02")}
    np.testing.assert_array_equal(cache.load("case01"), first["case01"])
    assert not list(cache.folder.glob(".partial_*"))

    shutil.rmtree(paths.stage_folder("500", "density", "none_gaussian", teacher.plans_name))
    write_teacher(teacher, seed=1)  # retrained teacher: the cache belongs to the old one
    build_target_cache(plans, variant)
    assert not np.array_equal(cache.load("case00"), first["case00"])
    assert json.loads((cache.folder / TEACHER_FILE).read_text())["checkpoint_sha256"]


def test_statistics_are_the_median_and_iqr_over_body_voxels(teacher):
    plans, variant = _student(teacher)
    cache = build_target_cache(plans, variant)
    stats = cache.stats()
    dataset = open_preprocessed_dataset(plans.data_dir, ["case00", "case01", "case02"])
    values = np.concatenate([np.asarray(cache.load(c))[0][np.asarray(dataset.load_case(c)[1][0]) == 1]
                             for c in ["case00", "case01", "case02"]])  # fewer than the sample size: all voxels
    q25, q50, q75 = np.percentile(values.astype(np.float64), [25, 50, 75])
    np.testing.assert_allclose(stats["median"], [q50], rtol=1e-6)
    np.testing.assert_allclose(stats["iqr"], [q75 - q25], rtol=1e-6)


def test_loader_normalises_targets_and_marks_padding_invalid(teacher):
    plans, variant = _student(teacher)
    cache = build_target_cache(plans, variant)
    dataset = open_preprocessed_dataset(plans.data_dir, ["case00"])
    loader = DistillPatchDataLoader(dataset, cache, [2.0], [4.0], 1, (20, 16, 16), seed=0)  # z 20 > 17 voxels
    data, target, valid = loader.make_patch("case00")
    assert data.shape == (1, 20, 16, 16) and target.shape == (1, 20, 16, 16)
    assert 0 < valid.mean() < 1 and np.all(target[valid == 0] == 0)
    raw = np.asarray(cache.load("case00"))
    # the valid region is a window of the case: its normalised values appear in the case at some offset
    z = np.flatnonzero(valid[0, :, 0, 0])
    assert len(z) == raw.shape[1]
    window = target[0, z]
    found = [(y, x) for y in range(raw.shape[2] - 15) for x in range(raw.shape[3] - 15)
             if np.allclose((raw[0, :, y:y + 16, x:x + 16] - 2.0) / 4.0, window, atol=1e-6)]
    assert found


def test_loss_pieces_match_slow_references():
    rng = np.random.default_rng(0)
    out, tgt = rng.standard_normal((2, 3, 4, 6, 6)), rng.standard_normal((2, 3, 4, 6, 6))
    w = (rng.random((2, 1, 4, 6, 6)) > 0.3).astype(np.float64)
    reference = [((out[:, c] - tgt[:, c]) ** 2 * w[:, 0]).sum() / w.sum() for c in range(3)]
    np.testing.assert_allclose(masked_mse(*(torch.from_numpy(a) for a in (out, tgt, w))).numpy(), reference)
    small, weight = reduce_to(torch.from_numpy(tgt), torch.from_numpy(w), (2, 3, 3))
    block = lambda a: a.reshape(2, -1, 2, 2, 3, 2, 3, 2).mean(axis=(3, 5, 7))  # noqa: E731
    np.testing.assert_allclose(weight.numpy(), block(w))
    expected = block(tgt * w) / np.maximum(block(w), 1e-6)
    np.testing.assert_allclose(small.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(deep_supervision_weights(4), np.array([1, 0.5, 0.25, 0]) / 1.75)
    np.testing.assert_allclose(deep_supervision_weights(4, ddp=True), np.array([1, 0.5, 0.25, 1e-6]) / (1.75 + 1e-6))


def test_map_and_features_train_a_wider_student_and_same_seed_same_weights(teacher):
    folder = train_tiny_student(teacher, "map+features", iterations=2)
    checkpoint = load_distill_checkpoint(folder / FINAL_CHECKPOINT)
    # map + 8 descriptor channels + the cpu preset's 2 x 8 histogram channels (the CLAHE image's, the window's)
    assert checkpoint["out_channels"] == 25 and len(checkpoint["target_iqr"]) == 25
    assert folder.name == f"distill__mapfeat_none_gaussian_{teacher.plans_name}__{STUDENT_PLANS}"
    assert "loss/feature_mse" in checkpoint["logging"]
    seg = [v for k, v in checkpoint["network_weights"].items() if k.endswith("seg_layers.0.weight")]
    assert seg and seg[0].shape[0] == 25
    again = train_tiny_student(teacher, "map+features", iterations=2, overwrite=True)
    weights = load_checkpoint(again / FINAL_CHECKPOINT)["network_weights"]
    assert all(torch.equal(weights[k], v) for k, v in checkpoint["network_weights"].items())


def test_continue_resumes_and_exports_again(teacher):
    folder = train_tiny_student(teacher, iterations=2)
    exported = (folder / PRETRAINED_WEIGHTS).stat().st_mtime_ns
    train_tiny_student(teacher, iterations=4, continue_training=True)
    checkpoint = load_checkpoint(folder / FINAL_CHECKPOINT)
    assert checkpoint["iteration"] == 4 and checkpoint["stage"] == "distill"
    assert (folder / PRETRAINED_WEIGHTS).stat().st_mtime_ns != exported
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "resumed from" in log and "at iteration 2" in log

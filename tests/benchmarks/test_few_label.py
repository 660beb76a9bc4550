"""The few-label benchmark's scoring (Dice, lesion-wise detection against a slow per-voxel reference), its splits
and its width cap, without training (the benchmark itself runs nnU-Net for minutes)."""
from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest
import SimpleITK as sitk

from tests.benchmarks.test_quality_smoke import _load

few_label = _load("few_label")


def _components(mask: np.ndarray):
    """Slow reference: 26-connected components by flood fill, as sets of voxel tuples."""
    left, comps = set(zip(*np.nonzero(mask))), []
    while left:
        stack, comp = [left.pop()], set()
        while stack:
            v = stack.pop()
            comp.add(v)
            for d in product((-1, 0, 1), repeat=3):
                n = tuple(a + b for a, b in zip(v, d))
                if n in left:
                    left.remove(n)
                    stack.append(n)
        comps.append(comp)
    return comps


@pytest.mark.parametrize("seed", range(5))
def test_dice_and_detection_match_a_slow_reference(seed):
    rng = np.random.default_rng(seed)
    label, prediction = rng.random((2, 6, 7, 8)) > 0.85
    predicted = set(zip(*np.nonzero(prediction)))
    labelled = set(zip(*np.nonzero(label)))
    expected_dice = 2 * len(predicted & labelled) / (len(predicted) + len(labelled))
    lesions = _components(label)
    blobs = _components(prediction)
    expected = (len(lesions), sum(bool(c & predicted) for c in lesions), sum(not (c & labelled) for c in blobs))
    assert few_label.dice(prediction, label) == pytest.approx(expected_dice)
    assert few_label.lesion_detection(prediction, label) == expected


def test_dice_of_two_empty_masks_is_one_and_of_a_missed_lesion_zero():
    empty = np.zeros((3, 3, 3), dtype=bool)
    lesion = empty.copy()
    lesion[1, 1, 1] = True
    assert few_label.dice(empty, empty) == 1.0
    assert few_label.dice(empty, lesion) == 0.0
    assert few_label.lesion_detection(empty, lesion) == (1, 0, 0)


def test_score_run_pools_lesions_over_scans(tmp_path):
    segs, labels = tmp_path / "segs", tmp_path / "labels"
    segs.mkdir(), labels.mkdir()
    label = np.zeros((4, 8, 8), dtype=np.uint8)
    label[1, 1, 1] = label[2, 6, 6] = 1  # two lesions
    prediction = np.zeros_like(label)
    prediction[1, 1, 1] = prediction[0, 4, 4] = 1  # one found, one false-positive blob
    for name, pred in (("a.nii.gz", prediction), ("b.nii.gz", label)):
        sitk.WriteImage(sitk.GetImageFromArray(label), str(labels / name))
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(segs / name))
    scores = few_label.score_run(segs, labels)
    assert scores["lesions"] == 4 and scores["detection"] == 0.75 and scores["fp_per_scan"] == 0.5
    assert scores["dice"] == pytest.approx((2 * 1 / 4 + 1.0) / 2)


def test_splits_train_on_the_first_k_cases_and_validate_on_the_last(tmp_path):
    cases = [f"case_{i:04d}" for i in range(12)]
    few_label.write_splits(tmp_path, cases, [2, 5, 10], n_val=2)
    splits = json.loads((tmp_path / "splits_final.json").read_text())
    assert [s["train"] for s in splits] == [cases[:2], cases[:5], cases[:10]]
    assert all(s["val"] == cases[10:] for s in splits)


def test_width_cap_changes_only_the_features_per_stage(tmp_path):
    plans = {"configurations": {"3d_fullres": {"patch_size": [32, 64, 64], "architecture": {"arch_kwargs": {
        "n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320], "strides": [[1, 1, 1]] * 5}}}}}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    few_label.cap_widths(path, 64)
    capped = json.loads(path.read_text())
    assert capped["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] == [
        32, 64, 64, 64, 64]
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [32, 64, 64, 64, 64]
    assert capped == plans

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


def _args(tmp_path, *extra):
    return few_label.build_parser().parse_args(["--work_dir", str(tmp_path / "work"), "--screener_root",
                                                 str(tmp_path / "absent"), "--labels", "2", "5", "--seeds", "0", "1",
                                                 *extra])


def _scores(dice):
    return {"dice": dice, "detection": 0.5, "fp_per_scan": 2.0, "cpu_s": 60.0, "lesions": 4, "scans": 2}


def _never_trains(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("a run found in the archive was trained again")
    monkeypatch.setattr(few_label.FewLabelCampaign, "prepare", fail)
    monkeypatch.setattr(few_label.FewLabelCampaign, "step", fail)


def test_a_fresh_work_dir_takes_the_archived_runs_and_trains_nothing(tmp_path, monkeypatch):
    args = _args(tmp_path)
    budget, archive = few_label.budget_of(args), tmp_path / "figures"
    runs = {few_label.run_key(budget, init, k, s): _scores(0.1 * k + 0.01 * s + (init == "distilled"))
            for init in few_label.INITS for k in (2, 5) for s in (0, 1)}
    runs[few_label.run_key("it4x25", "scratch", 2, 0)] = _scores(0.9)  # another budget: not in this table
    (tmp_path / "work").mkdir()
    common = few_label.common
    common.write_json(archive / "summary.json", {"settings": few_label.settings_of(args), "runs": runs})
    common.write_json(archive / "ledger.json", {"finetune/x": {"cpu_s": 60.0, "machine": "cpu A"}})
    common.write_json(tmp_path / "work" / "ledger.json", {"distill": {"cpu_s": 5.0, "machine": "cpu B"}})
    _never_trains(monkeypatch)

    campaign = few_label.FewLabelCampaign(args, few_label.archived_runs(archive, few_label.settings_of(args)))
    assert campaign.run() == runs
    few_label.export_figures(campaign.work, archive)

    assert few_label.read_summary(archive / "summary.json")["runs"] == runs  # nothing lost, nothing invented
    assert set(json.loads((archive / "ledger.json").read_text())) == {"finetune/x", "distill"}
    table = few_label.table(runs, budget, [2, 5], [0, 1]).splitlines()
    assert table[2].startswith("| 2 | scratch | 2 | 0.205 ± 0.005 |")  # seeds 0.20 and 0.21; it4x25's 0.9 left out
    assert table[5].startswith("| 5 | distilled | 2 | 1.505 ± 0.005 |")


def test_an_archive_of_other_settings_is_refused_by_name(tmp_path):
    args = _args(tmp_path)
    few_label.common.write_json(tmp_path / "figures" / "summary.json",
                                {"settings": {**few_label.settings_of(args), "data_seed": 7}, "runs": {}})
    with pytest.raises(SystemExit, match=r"figures/summary.json .*data_seed: 7 there, 1 here"):
        few_label.archived_runs(tmp_path / "figures", few_label.settings_of(args))


def test_a_summary_of_before_the_archive_reads_as_empty(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"scratch/labels2/seed0": _scores(0.1)}))
    assert few_label.read_summary(tmp_path / "summary.json") == {"settings": {}, "runs": {}}


def test_a_recorded_run_without_segmentations_or_scores_stops_with_a_message(tmp_path, monkeypatch):
    args = _args(tmp_path)
    step = f"finetune/{few_label.budget_of(args)}/scratch/seed0/labels2"
    few_label.common.write_json(tmp_path / "work" / "ledger.json", {step: {"cpu_s": 1.0}})
    _never_trains(monkeypatch)
    with pytest.raises(SystemExit, match=r"records .*scratch/seed0/labels2 but its segmentations .* are gone"):
        few_label.FewLabelCampaign(args).run()


def test_a_run_of_the_work_dir_is_scored_from_its_segmentations_before_the_archive(tmp_path, monkeypatch):
    args = _args(tmp_path, "--labels", "2", "--seeds", "0")
    budget, work = few_label.budget_of(args), tmp_path / "work"
    labels = work / "nnUNet_raw" / "Dataset501_SyntheticCTLabelled" / "labelsTs"
    segs = work / "finetune" / budget / "scratch_seed0" / "segmentations" / "labels2"
    labels.mkdir(parents=True), segs.mkdir(parents=True)
    lesion = np.zeros((4, 8, 8), dtype=np.uint8)
    lesion[1:3, 2:5, 2:5] = 1
    sitk.WriteImage(sitk.GetImageFromArray(lesion), str(labels / "test_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(lesion), str(segs / "test_0000.nii.gz"))  # a perfect segmentation
    few_label.common.write_json(work / "ledger.json", {f"finetune/{budget}/scratch/seed0/labels2": {"cpu_s": 90.0}})
    archived = {few_label.run_key(budget, i, 2, 0): _scores(0.3) for i in few_label.INITS}
    _never_trains(monkeypatch)

    runs = few_label.FewLabelCampaign(args, archived).run()
    assert runs[few_label.run_key(budget, "scratch", 2, 0)]["dice"] == 1.0  # its own run, not the archive's 0.3
    assert runs[few_label.run_key(budget, "scratch", 2, 0)]["cpu_s"] == 90.0
    assert runs[few_label.run_key(budget, "distilled", 2, 0)]["dice"] == 0.3  # measured elsewhere

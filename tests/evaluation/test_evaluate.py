"""evaluate_folder on a tiny folder of NIfTI labels, maps and images: pooling, per kind, per case, errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from nnscreener.errors import ScreenerError
from nnscreener.evaluation import metrics
from nnscreener.evaluation.evaluate import (evaluate_folder, format_summary_table, lesion_kinds_from_dataset_json,
                                            write_summary)
from nnscreener.planning.body_mask import body_mask_from_hu

SHAPE = (8, 20, 22)  # (z, y, x)


def _write(array: np.ndarray, path: Path, spacing=(0.8, 0.8, 2.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 4.0, 1.5))
    sitk.WriteImage(image, str(path))


def _tiny_dataset(root: Path, seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """labelsTs / imagesTs / maps with 3 cases: kind 1 lesions, kind 1 + 2 lesions, no lesion."""
    rng = np.random.default_rng(seed)
    for sub in ("labelsTs", "imagesTs", "maps"):
        (root / sub).mkdir(parents=True)
    zz, yy, xx = np.indices(SHAPE)
    image = np.full(SHAPE, -1000, np.int16)
    image[((yy - 10) / 8.0) ** 2 + ((xx - 11) / 9.0) ** 2 <= 1] = 30
    labels = {c: np.zeros(SHAPE, np.uint8) for c in ("a", "b", "c")}
    labels["a"][2:5, 6:9, 6:10] = 1
    labels["a"][6, 12, 12] = labels["a"][7, 13, 13] = 1  # corner contact: one region
    labels["b"][3:6, 10:14, 12:15] = 2
    labels["b"][1, 8, 8] = 1
    cases = {}
    for case, lab in labels.items():
        body = body_mask_from_hu(image)
        score_map = (rng.normal(size=SHAPE) + 1.2 * (lab > 0)).astype(np.float32)
        score_map[~body] = score_map[body].min()
        _write(lab, root / "labelsTs" / f"{case}.nii.gz")
        _write(image, root / "imagesTs" / f"{case}_0000.nii.gz")
        _write(score_map, root / "maps" / f"{case}.nii.gz")
        cases[case] = {"labels": lab, "map": score_map, "body": body}
    return cases


def _exact_metrics(cases: Dict[str, Dict[str, np.ndarray]], kind: int | None = None) -> Dict[str, float]:
    """All lesion voxels (of a kind) vs ALL non-lesion body voxels, regions labelled per volume (26-conn.)."""
    positives, ids, negatives, offset = [], [], [], 0
    for case in cases.values():
        lesion = case["labels"] > 0
        selected = lesion if kind is None else case["labels"] == kind
        regions, n = ndimage.label(selected, structure=np.ones((3, 3, 3)))
        positives.append(case["map"][selected])
        ids.append(regions[selected] + offset)
        negatives.append(case["map"][case["body"] & ~lesion])
        offset += n
    pos, neg = np.concatenate(positives).astype(float), np.concatenate(negatives).astype(float)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    return {"auroc": roc_auc_score(labels, scores), "partial_auroc": metrics.partial_auroc(scores, labels, 0.3),
            "aupro": metrics.aupro(pos, np.concatenate(ids), neg, 0.3)}


def test_pooled_metrics_equal_exact_metrics_when_all_negatives_are_taken(tmp_path: Path):
    cases = _tiny_dataset(tmp_path)
    summary = evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", tmp_path / "imagesTs",
                              n_negatives=10 ** 6, lesion_kinds={1: "nodule", 2: "bone"})
    exact = _exact_metrics(cases)
    for name, value in exact.items():
        assert summary["dataset"][name] == pytest.approx(value, abs=1e-9)
    lesion = {c: case["labels"] > 0 for c, case in cases.items()}
    normal = np.concatenate([case["map"][case["body"] & ~lesion[c]] for c, case in cases.items()])
    in_lesions = np.concatenate([case["map"][lesion[c]] for c, case in cases.items()])
    assert summary["dataset"]["mean_normal_score"] == pytest.approx(float(normal.mean()), rel=1e-6)
    assert summary["dataset"]["mean_lesion_score"] == pytest.approx(float(in_lesions.mean()), rel=1e-6)
    assert 0.6 < summary["dataset"]["auroc"] < 1.0  # signal, not a degenerate fixture
    assert summary["dataset"]["n_regions"] == 4  # a: block + corner pair, b: block + single voxel
    for kind, value in ((1, "nodule"), (2, "bone")):
        entry = summary["per_kind"][value]
        assert entry["label_value"] == kind
        assert entry["n_positive_voxels"] == sum(int((c["labels"] == kind).sum()) for c in cases.values())
        for name, expected in _exact_metrics(cases, kind).items():
            assert entry[name] == pytest.approx(expected, abs=1e-9)
    assert summary["per_kind"]["nodule"]["n_cases"] == 2 and summary["per_kind"]["bone"]["n_cases"] == 1


def test_per_case_entries_and_cases_without_lesions(tmp_path: Path):
    cases = _tiny_dataset(tmp_path)
    summary = evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", tmp_path / "imagesTs", n_negatives=50)
    assert set(summary["per_case"]) == {"a", "b", "c"}
    c = summary["per_case"]["c"]
    assert c["n_positive_voxels"] == 0 and all(c[m] is None for m in ("auroc", "partial_auroc", "aupro"))
    assert summary["dataset"]["n_negative_voxels"] == 150  # c's negatives are pooled too
    assert summary["dataset"]["n_cases"] == 3 and summary["dataset"]["n_cases_with_lesions"] == 2
    a = summary["per_case"]["a"]
    assert a["n_positive_voxels"] == int((cases["a"]["labels"] > 0).sum()) and a["n_regions"] == 2
    assert 0.0 <= a["aupro"] <= 1.0
    # two label values and no names: per-kind entries named by value
    assert set(summary["per_kind"]) == {"label_1", "label_2"}
    json.dumps(summary)  # serializable


def test_sampled_summary_is_deterministic_and_close_to_exact(tmp_path: Path):
    cases = _tiny_dataset(tmp_path)
    run = lambda seed: evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", tmp_path / "imagesTs",
                                       n_negatives=400, seed=seed)
    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first["dataset"]["aupro"] != other["dataset"]["aupro"]
    assert first["dataset"]["auroc"] == pytest.approx(_exact_metrics(cases)["auroc"], abs=0.05)


def test_perfect_map_scores_one_and_body_from_map_without_images(tmp_path: Path):
    cases = _tiny_dataset(tmp_path)
    for case, data in cases.items():
        perfect = np.where(data["labels"] > 0, 2.0, 1.0).astype(np.float32)
        perfect[~data["body"]] = 0.0
        _write(perfect, tmp_path / "maps" / f"{case}.nii.gz")
    summary = evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", n_negatives=100)
    assert summary["settings"]["body"] == "voxels above the map's minimum"
    assert [summary["dataset"][m] for m in ("auroc", "partial_auroc", "aupro")] == pytest.approx([1.0] * 3, abs=1e-12)
    # each lesion against the body 15-30 mm around it (the tiny scans are 16 x 17.6 x 16 mm: some have no ring)
    assert summary["dataset"]["local_auroc"] == 1.0 and summary["dataset"]["n_local_lesions"] >= 1
    assert all(entry["local_auroc"] in (None, 1.0) for entry in summary["per_kind"].values())


def test_errors_name_the_missing_case_and_the_geometry_mismatch(tmp_path: Path):
    _tiny_dataset(tmp_path)
    (tmp_path / "maps" / "b.nii.gz").unlink()
    with pytest.raises(ScreenerError, match=r"1 of 3 labelled cases have no anomaly maps .*: b"):
        evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps")
    _write(np.zeros(SHAPE, np.float32), tmp_path / "maps" / "b.nii.gz", spacing=(1.0, 1.0, 2.0))
    with pytest.raises(ScreenerError, match="case b: .*spacing"):
        evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps")
    (tmp_path / "imagesTs" / "c_0000.nii.gz").unlink()
    with pytest.raises(ScreenerError, match="no images .*: c"):
        evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", tmp_path / "imagesTs")
    with pytest.raises(ScreenerError, match="does not exist"):
        evaluate_folder(tmp_path / "nowhere", tmp_path / "maps")
    with pytest.raises(ScreenerError, match="max_fpr"):
        evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", max_fpr=1.2)
    with pytest.raises(ScreenerError, match=">= 1"):
        evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", n_negatives=0)


def test_no_lesion_anywhere_is_an_error(tmp_path: Path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "maps").mkdir()
    _write(np.zeros(SHAPE, np.uint8), tmp_path / "labels" / "x.nii.gz")
    _write(np.random.default_rng(0).random(SHAPE).astype(np.float32), tmp_path / "maps" / "x.nii.gz")
    with pytest.raises(ScreenerError, match="no lesion voxel"):
        evaluate_folder(tmp_path / "labels", tmp_path / "maps")


def test_lesion_kinds_from_dataset_json(tmp_path: Path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "nodule": 1, "lytic": 2},
                                "lesion_kinds": {"1": "solid_lung_nodule", "2": "lytic_bone"}}))
    assert lesion_kinds_from_dataset_json(path) == {1: "solid_lung_nodule", 2: "lytic_bone"}
    path.write_text(json.dumps({"labels": {"background": 0, "nodule": 1, "region": [1, 2]}}))
    assert lesion_kinds_from_dataset_json(path) == {1: "nodule"}
    with pytest.raises(ScreenerError, match="cannot read"):
        lesion_kinds_from_dataset_json(tmp_path / "missing.json")


def test_table_and_json_output(tmp_path: Path):
    _tiny_dataset(tmp_path)
    summary = evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", n_negatives=100,
                              lesion_kinds={1: "nodule", 2: "bone"})
    table = format_summary_table(summary)
    assert "AUROC@0.3" in table and "AUPRO@0.3" in table
    assert "kind: nodule" in table and "ALL (3 cases, pooled)" in table and "1 cases without lesions" in table
    assert f"{summary['dataset']['aupro']:.4f}" in table
    assert "\na " in table and "\nc " not in table  # per-case rows only for cases with lesions
    path = write_summary(summary, tmp_path / "out" / "summary.json")
    assert json.loads(path.read_text())["dataset"]["auroc"] == summary["dataset"]["auroc"]


def test_balanced_protocol_draws_up_to_n_voxels_per_class_and_scan(tmp_path, monkeypatch):
    """Authors' protocol: per scan at most n lesion and n normal voxels; the pooled AUROC is sklearn's on them."""
    from nnscreener.evaluation import evaluate as evaluate_module
    from nnscreener.evaluation import sampling

    n = 10  # small enough that case "a" (>10 lesion voxels) is subsampled
    monkeypatch.setattr(evaluate_module, "BALANCED_VOXELS_PER_SCAN", n)
    cases = _tiny_dataset(tmp_path)
    summary = evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", tmp_path / "imagesTs", protocol="balanced")
    per_case = summary["per_case"]
    assert summary["settings"]["protocol"] == "balanced"
    assert per_case["a"]["n_positive_voxels"] == n < int((cases["a"]["labels"] > 0).sum())
    assert all(entry["n_negative_voxels"] == n for entry in per_case.values())
    assert summary["dataset"]["n_negative_voxels"] == 3 * n
    again = evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", tmp_path / "imagesTs", protocol="balanced")
    assert again["dataset"] == summary["dataset"]  # seeded
    # the same voxels by hand: the 'all' protocol's sample of n negatives, then the balanced subsample
    kept = [sampling.balanced_subsample(
        sampling.load_case_sample(c, tmp_path / "labelsTs" / f"{c}.nii.gz", tmp_path / "maps" / f"{c}.nii.gz",
                                  tmp_path / "imagesTs" / f"{c}_0000.nii.gz", n_negatives=n), n) for c in "abc"]
    positives = np.concatenate([k.positive_scores for k in kept])
    negatives = np.concatenate([k.negative_scores for k in kept])
    expected = roc_auc_score(np.r_[np.ones(positives.size), np.zeros(negatives.size)], np.r_[positives, negatives])
    assert summary["dataset"]["auroc"] == pytest.approx(expected, abs=1e-12)
    assert all(np.array_equal(np.unique(k.region_ids), np.arange(1, k.n_regions + 1)) for k in kept)


def test_unknown_protocol_is_refused(tmp_path):
    _tiny_dataset(tmp_path)
    with pytest.raises(ScreenerError, match="protocol"):
        evaluate_folder(tmp_path / "labelsTs", tmp_path / "maps", protocol="half")

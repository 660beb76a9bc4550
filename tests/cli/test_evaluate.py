"""nnScreener_evaluate end to end on a tiny raw-dataset-like folder of NIfTI labels, images and maps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.cli import evaluate as evaluate_cli

SHAPE = (6, 16, 18)  # (z, y, x)


def _write(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 3.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """DatasetXXX-like folder: dataset.json naming kinds, labelsTs, imagesTs and a folder of maps."""
    rng = np.random.default_rng(0)
    root = tmp_path / "Dataset900_Tiny"
    for sub in ("labelsTs", "imagesTs", "maps"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1, "lytic": 2},
        "lesion_kinds": {"1": "solid_lung_nodule", "2": "lytic_bone_lesion"}, "file_ending": ".nii.gz"}))
    zz, yy, xx = np.indices(SHAPE)
    image = np.full(SHAPE, -1000, np.int16)
    image[((yy - 8) / 6.5) ** 2 + ((xx - 9) / 7.5) ** 2 <= 1] = 20
    for i, case in enumerate(("case_0001", "case_0002", "case_0003")):
        labels = np.zeros(SHAPE, np.uint8)
        if i < 2:
            labels[2:4, 6:9, 6:9] = i + 1
        score_map = (rng.normal(size=SHAPE) + 2.0 * (labels > 0)).astype(np.float32)
        _write(labels, root / "labelsTs" / f"{case}.nii.gz")
        _write(image, root / "imagesTs" / f"{case}_0000.nii.gz")
        _write(score_map, root / "maps" / f"{case}.nii.gz")
    return root


def test_cli_prints_a_table_and_writes_the_json(dataset: Path, capsys):
    out = dataset / "eval" / "summary.json"
    rc = evaluate_cli.main(["-ref", str(dataset / "labelsTs"), "-pred", str(dataset / "maps"),
                            "-img", str(dataset / "imagesTs"), "-o", str(out), "--n_negatives", "300"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "AUROC@0.3" in printed and "AUPRO@0.3" in printed and "case_0001" in printed
    assert "kind: solid_lung_nodule" in printed and "kind: lytic_bone_lesion" in printed  # auto dataset.json
    summary = json.loads(out.read_text())
    assert set(summary) == {"settings", "dataset", "per_kind", "per_case"}
    assert summary["settings"]["n_negatives_per_case"] == 300 and summary["settings"]["region_connectivity"] == 26
    assert summary["dataset"]["n_negative_voxels"] == 900
    assert summary["dataset"]["auroc"] > 0.8  # lesions carry a +2 signal
    assert f"{summary['dataset']['auroc']:.4f}" in printed
    assert summary["per_case"]["case_0003"]["auroc"] is None


def test_cli_default_output_seed_and_explicit_dataset_json(dataset: Path, tmp_path: Path, capsys):
    other_json = tmp_path / "kinds.json"
    other_json.write_text(json.dumps({"lesion_kinds": {"1": "a", "2": "b"}}))
    argv = ["-ref", str(dataset / "labelsTs"), "-pred", str(dataset / "maps"), "--dataset_json", str(other_json),
            "--n_negatives", "50", "--seed", "3", "--no_per_case"]
    assert evaluate_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "case_0001" not in printed and "kind: a" in printed
    summary = json.loads((dataset / "maps" / "summary.json").read_text())
    assert summary["settings"]["seed"] == 3 and set(summary["per_kind"]) == {"a", "b"}
    assert summary["settings"]["body"] == "voxels above the map's minimum"
    assert summary["settings"]["protocol"] == "all"


def test_cli_balanced_protocol(dataset: Path, capsys):
    argv = ["-ref", str(dataset / "labelsTs"), "-pred", str(dataset / "maps"), "-img", str(dataset / "imagesTs"),
            "--protocol", "balanced", "-o", str(dataset / "balanced.json")]
    assert evaluate_cli.main(argv) == 0
    assert "protocol balanced" in capsys.readouterr().out
    summary = json.loads((dataset / "balanced.json").read_text())
    assert summary["settings"]["protocol"] == "balanced"
    assert all(entry["n_negative_voxels"] <= 1000 and entry["n_positive_voxels"] <= 1000
               for entry in summary["per_case"].values())


def _one_line_error(capsys) -> str:
    """The error line (stderr may also hold the progress bar's lines before it)."""
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("nnScreener_evaluate: error:") and "Traceback" not in err
    return last


def test_cli_errors_are_one_line(dataset: Path, capsys):
    base = ["-ref", str(dataset / "labelsTs"), "-pred", str(dataset / "maps")]
    assert evaluate_cli.main(["-ref", str(dataset / "nope"), "-pred", str(dataset / "maps")]) == 1
    assert "-ref folder" in (err := _one_line_error(capsys)) and "nope" in err
    assert evaluate_cli.main(base + ["-img", str(dataset / "no_images")]) == 1
    assert "-img folder" in _one_line_error(capsys)
    (dataset / "maps" / "case_0002.nii.gz").unlink()
    assert evaluate_cli.main(base) == 1
    assert "no anomaly maps" in (err := _one_line_error(capsys)) and "case_0002" in err
    _write(np.zeros((6, 16, 17), np.float32), dataset / "maps" / "case_0002.nii.gz")
    assert evaluate_cli.main(base) == 1
    assert "case case_0002" in (err := _one_line_error(capsys)) and "size" in err

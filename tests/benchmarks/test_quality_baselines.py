"""Part ``baselines`` of the quality campaign: its rows (budget, variant, method) and its table (per lesion kind,
CPU minutes), without running any training (the tiny end-to-end campaign is test_quality_smoke.py's)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks.test_quality_smoke import quality, report


def test_baseline_rows_get_the_three_stages_steps_together_and_predict_with_their_method(tmp_path):
    campaign = quality.Campaign.__new__(quality.Campaign)  # rows() needs only the arguments
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path), "--parts", "baselines",
                                                       "--scales", "4", "1", "--base_iterations", "10", "20", "30"])
    rows = campaign.rows()
    assert [(r.label, r.stage, r.variant, r.key, r.setup.iterations_of(r.stage)) for r in rows] == [
        ("baseline_ae 1x", "baseline_ae", "l1", "baseline_ae__l1", 60),
        ("baseline_ae 4x", "baseline_ae", "l1", "baseline_ae__l1", 240),
        ("baseline_synthetic 1x", "baseline_synthetic", "blend", "baseline_synthetic__blend", 60),
        ("baseline_synthetic 4x", "baseline_synthetic", "blend", "baseline_synthetic__blend", 240),
        ("baseline_draem 1x", "baseline_draem", "draem", "baseline_draem__draem", 60),
        ("baseline_draem 4x", "baseline_draem", "draem", "baseline_draem__draem", 240),
        ("baseline_synthetic_visible 1x", "baseline_synthetic", "visible", "baseline_synthetic__visible", 60),
        ("baseline_synthetic_visible 4x", "baseline_synthetic", "visible", "baseline_synthetic__visible", 240)]
    assert rows[0].setup.name == "default_it10-20-30"  # the same results root as the default model at 1x
    assert [r.train_args for r in rows[-2:]] == [("--set", "baseline_synthetic.target=visible")] * 2
    assert not any(r.train_args for r in rows[:-2])
    assert [m for m in quality.BASELINES if m == quality.BASELINES[m].method] == [
        "baseline_ae", "baseline_synthetic", "baseline_draem"]  # every baseline stage as configured


def test_a_baseline_variant_trains_with_its_overrides_into_its_own_folder(tmp_path):
    campaign = quality.Campaign.__new__(quality.Campaign)
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path), "--parts", "baselines",
                                                       "--baselines", "baseline_synthetic_visible", "--scales", "1",
                                                       "--base_iterations", "10"])
    campaign.work_dir, campaign.raw_dir = tmp_path, tmp_path / "nnUNet_raw" / "Dataset500_SyntheticCT"
    campaign.ledger = quality.common.Ledger(tmp_path / "ledger.json")
    campaign.env = lambda plans, results=None: {}
    argvs = []
    campaign.step = lambda step_id, argv, env, **extra: argvs.append((step_id, argv))
    campaign.check_config = lambda *args: None  # test_quality_config.py's
    (row,) = campaign.rows()
    assert campaign.train(row.setup, 0, row.stage, row.variant, row.train_args) == \
        "train/default_it10/seed0/baseline_synthetic/visible"
    (step_id, argv), = argvs
    assert argv[-2:] == ["--set", "baseline_synthetic.target=visible"] and "baseline_synthetic" in argv


def _summary(path: Path, auroc: float, per_kind: dict) -> str:
    path.write_text(json.dumps({"dataset": {"auroc": auroc, "partial_auroc": 0.2, "aupro": 0.1, "local_auroc": 0.5},
                                "per_kind": {k: {"auroc": v, "local_auroc": v / 2} for k, v in per_kind.items()}}))
    return str(path)


def test_baselines_table_sets_them_beside_the_default_model_per_lesion_kind(tmp_path):
    ledger = {"train/s": {"cpu_s": 600, "wall_s": 700}, "train/b": {"cpu_s": 120, "wall_s": 130},
              "predict/s": {"cpu_s": 60, "wall_s": 70}, "predict/b": {"cpu_s": 30, "wall_s": 40}}
    today = report.preset_fingerprint()  # rows of today's preset: not marked as an older one's
    rows = [{"part": "scaling", "label": "1x", "iterations": [1, 2, 3], "preset": today, "seeds": {"0": {
                "cost": {"descriptor": "train/s", "predict": "predict/s"},
                "summaries": {"all": _summary(tmp_path / "s.json", 0.9, {"nodule": 0.8, "liver": 0.95})}}}},
            {"part": "baselines", "label": "baseline_ae 1x", "steps": 6, "preset": today, "seeds": {"0": {
                "cost": {"baseline_ae": "train/b", "predict": "predict/b"},
                "summaries": {"all": _summary(tmp_path / "b.json", 0.7, {"nodule": 0.6, "liver": 0.75})}}}}]
    (tmp_path / "campaign.json").write_text(json.dumps({"rows": rows, "protocols": ["all"]}))
    (tmp_path / "ledger.json").write_text(json.dumps(ledger))
    table = report.table_baselines(report.Figures(tmp_path), "all")
    assert "| Screener (masking + flow) 1x | 1 + 2 + 3 | 1 | 0.900 | 0.200 | 0.100 | 0.500 | 10.0 | 1.0 |" in table
    assert "| baseline_ae 1x | 6 | 1 | 0.700 | 0.200 | 0.100 | 0.500 | 2.0 | 0.5 |" in table
    assert "| method | nodule | liver |" in table and "| baseline_ae 1x | 0.600 | 0.750 |" in table
    local = table[table.index("Local AUROC per lesion kind"):]
    assert "| baseline_ae 1x | 0.300 | 0.375 |" in local and "| baseline_ae 1x | 0.600 | 0.750 |" not in local
    assert report.table_baselines(report.Figures(_without_baselines(tmp_path)), "all") == \
        "_part `baselines` not run_"


def _without_baselines(work: Path) -> Path:
    other = work / "other"
    other.mkdir()
    campaign = json.loads((work / "campaign.json").read_text())
    campaign["rows"] = [r for r in campaign["rows"] if r["part"] != "baselines"]
    (other / "campaign.json").write_text(json.dumps(campaign))
    return other


def test_density_only_configurations_use_the_plans_of_their_ssl_models(tmp_path):
    campaign = quality.Campaign.__new__(quality.Campaign)
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path), "--base_iterations", "10"])
    assert campaign.setup("desc_layernorm", 1).plans == "nnScreenerPlans_cpu_desc_layernorm"
    assert campaign.setup("desc_layernorm_gauss", 1).plans == "nnScreenerPlans_cpu_desc_layernorm"
    assert campaign.setup("gauss_blend", 1).plans == campaign.setup("default", 1).plans == "nnScreenerPlans_cpu"


def test_prediction_only_configurations_score_the_models_of_another_with_their_predict_arguments(tmp_path):
    """``latent_score`` trains nothing of its own: it links the default setup's three result folders (whose training
    cost it reports) and predicts them with ``--score latent``."""
    campaign = quality.Campaign.__new__(quality.Campaign)
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path), "--base_iterations", "10"])
    campaign.work_dir, campaign.raw_dir = tmp_path, tmp_path / "nnUNet_raw" / "Dataset500_SyntheticCT"
    campaign.ledger = quality.common.Ledger(tmp_path / "ledger.json")
    campaign.env = lambda plans, results=None: {}
    trained, argvs = [], []
    campaign.screener = lambda row, seed: trained.append(row.setup.name) or {"density": "train/default"}
    campaign.step = lambda step_id, argv, env, **extra: argvs.append(argv) or campaign.ledger.record(step_id, **extra)
    setup, base = campaign.setup("latent_score", 1), campaign.setup("default", 1)
    assert setup.plans == base.plans and setup.name == "latent_score_it10"
    row = quality.Row("configs", "latent_score", setup, *quality.DEFAULT_VARIANT)
    variant = campaign.ssl_variant(base)
    for stage, folder_variant in (("descriptor", variant), ("condition", variant), ("density", "masking_flow")):
        target = campaign.stage_dir(base, 0, stage, folder_variant)
        target.mkdir(parents=True)
        (target / quality.FINAL_CHECKPOINT).write_bytes(stage.encode())

    assert campaign.shared_models(row, 0) == {"density": "train/default"} and trained == ["default_it10"]
    for stage, folder_variant in (("descriptor", variant), ("condition", variant), ("density", "masking_flow")):
        link = campaign.stage_dir(setup, 0, stage, folder_variant)
        assert link.is_symlink() and link.resolve() == campaign.stage_dir(base, 0, stage, folder_variant).resolve()
    assert campaign.predict(row, 0) == "predict/latent_score_it10/seed0/masking_flow"
    (argv,) = argvs
    assert argv[-2:] == ["--score", "latent"] and str(campaign.prediction_dir(row, 0)) in argv


def test_a_descriptor_configuration_trains_its_own_descriptor_and_links_the_condition_of_another(tmp_path):
    """``desc_no_intensity_aug`` trains its descriptor with its own arguments in its own folder and links the default
    setup's condition (trained there if needed, its cost reported in this row)."""
    campaign = quality.Campaign.__new__(quality.Campaign)
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path),
                                                       "--base_iterations", "10", "20", "30"])
    campaign.work_dir, campaign.raw_dir = tmp_path, tmp_path / "nnUNet_raw" / "Dataset500_SyntheticCT"
    campaign.ledger = quality.common.Ledger(tmp_path / "ledger.json")
    campaign.env = lambda plans, results=None: {}
    campaign.check_config = lambda *args: None  # test_quality_config.py's
    trained = []
    campaign.step = lambda step_id, argv, env, **extra: trained.append((step_id, argv))
    setup, base = campaign.setup("desc_no_intensity_aug", 1), campaign.setup("default", 1)
    assert setup.plans == base.plans
    variant = campaign.ssl_variant(setup)

    step_ids = campaign.ssl(setup, 0)
    assert step_ids == [f"train/{setup.name}/seed0/descriptor", f"train/{base.name}/seed0/condition"]
    assert [step_id for step_id, _ in trained] == [f"train/{setup.name}/seed0/descriptor",
                                                   f"train/{base.name}/seed0/descriptor",
                                                   f"train/{base.name}/seed0/condition"]
    own_argv = trained[0][1]
    assert "ssl.augmentation.p_brightness=0" in own_argv and "ssl.augmentation.p_gamma=0" in own_argv
    assert not any("augmentation" in arg for _, argv in trained[1:] for arg in argv)
    condition = campaign.stage_dir(setup, 0, "condition", variant)
    assert condition.is_symlink() and condition.resolve() == campaign.stage_dir(base, 0, "condition", variant).resolve()
    assert not campaign.stage_dir(setup, 0, "descriptor", variant).is_symlink()

"""The quality scripts' own logic (benchmarks/quality.py, quality_report.py, common.py, ssl_quality.py): a tiny
end-to-end campaign (2 training steps, 2 seeds, a few small synthetic scans, every child a real CLI), the
untrained control's checkpoints, the CPU time of children, the RESULTS.md block writer and the masking probe's
arithmetic. The full benchmark is far too long for a unit test."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


common = _load("common")
quality = _load("quality")
report = _load("quality_report")
probe = _load("ssl_quality")
untrained = _load("untrained_models")
archive_module = _load("quality_archive")


def test_tiny_campaign_with_two_seeds_runs_resumes_and_reports(tmp_path):
    work, results, archive = tmp_path / "w", tmp_path / "RESULTS.md", tmp_path / "figures"
    argv = [sys.executable, str(BENCH / "quality.py"), "--work_dir", str(work), "-d", "978", "--n_train", "2",
            "--n_test", "1", "--base_iterations", "2", "--parts", "scaling", "--scales", "1", "--seeds", "0", "1",
            "--protocols", "all", "--step_size", "1", "--train_set", "ssl.batch_size=2", "density.batch_size=2",
            "-o", str(results), "--figures", str(archive)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    ledger = json.loads((work / "ledger.json").read_text())
    for seed in (0, 1):
        for stage in ("descriptor", "condition", "density/masking_flow"):
            record = ledger[f"train/default_it2/seed{seed}/{stage}"]
            assert record["cpu_s"] > 0 and record["wall_s"] > 0 and record["iterations"] == 2
            assert record["machine"] == ledger["plan/nnScreenerPlans_cpu"]["machine"] != ""
            assert record["model"] == common.file_fingerprint(
                next((work / "results/default_it2" / f"seed{seed}").glob(f"*/{stage.split('/')[0]}__*/"
                                                                          "checkpoint_final.pth")))
        assert f"evaluate/all/default_it2/seed{seed}/masking_flow" in ledger
        density = work / "results/default_it2" / f"seed{seed}"
        config = json.loads(next(density.glob("*/density__masking_flow__*/config.json")).read_text())
        assert config["seed"] == seed
    campaign = json.loads((work / "campaign.json").read_text())
    (row,) = campaign["rows"]
    assert row["preset"] == quality.preset_fingerprint()  # the tables mark rows of another preset by it
    assert set(row["seeds"]) == {"0", "1"} and all((work / e["summaries"]["all"]).is_file()
                                                   for e in row["seeds"].values())
    assert not any(Path(e["summaries"]["all"]).is_absolute() for e in row["seeds"].values())
    assert json.loads((archive / "campaign.json").read_text())["rows"] == [row]  # the figures, without models
    assert json.loads((archive / "ledger.json").read_text()) == ledger
    assert (archive / row["seeds"]["0"]["summaries"]["all"]).is_file() and not list(archive.rglob("*.pth"))
    text = results.read_text()
    assert "Evaluation protocol `all`" in text and " ± " in text and common.INTERPRETATION_TITLE in text
    assert "| 1x | 2 / 2 / 2 | 2 |" in text  # two seeds in the scaling row

    second = subprocess.run(argv, env=env, capture_output=True, text=True)  # everything finished: nothing runs
    assert second.returncode == 0 and "[run]" not in second.stdout
    assert json.loads((work / "ledger.json").read_text()) == ledger

    seeds = argv.index("--seeds")  # a later invocation: floors only, seed 0 only
    only_floors = [*argv[:seeds + 2], *argv[seeds + 3:]]
    only_floors[only_floors.index("scaling")] = "floors"
    third = subprocess.run(only_floors, env=env, capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    accumulated = json.loads((work / "campaign.json").read_text())
    assert [r["part"] for r in accumulated["rows"]] == ["scaling", "floors", "floors"]
    assert accumulated["rows"][0] == row and len(accumulated["commands"]) == 3
    assert "| 1x | 2 / 2 / 2 | 2 |" in results.read_text()  # the earlier invocation's rows stay in the tables

    # a fresh machine: another work dir, only the archive; the floors are imported, nothing runs, no row is lost
    fresh = [str(tmp_path / "w2") if a == str(work) else str(tmp_path / "R2.md") if a == str(results) else a
             for a in only_floors]
    fourth = subprocess.run(fresh, env=env, capture_output=True, text=True)
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    assert "[run]" not in fourth.stdout and "[figures] imported" in fourth.stdout
    assert json.loads((tmp_path / "w2" / "campaign.json").read_text())["rows"] == accumulated["rows"]
    assert "| 1x | 2 / 2 / 2 | 2 |" in (tmp_path / "R2.md").read_text()


def test_imported_figures_keep_what_the_work_dir_measured_and_refuse_another_dataset(tmp_path):
    archive, work = tmp_path / "archive", tmp_path / "work"

    def row(label, summary):
        entry = {"cost": {"density": label}, "summaries": {"all": summary}}
        return {"part": "configs", "label": label, "setup": f"{label}_it2", "seeds": {"0": entry}}

    for folder, figure in ((archive, 0.6), (work, 0.7)):
        (folder / "summaries/all").mkdir(parents=True)
        (folder / "summaries/all/a.json").write_text(json.dumps({"dataset": {"auroc": figure}}))
    (archive / "summaries/all/b.json").write_text(json.dumps({"dataset": {"auroc": 0.5}}))
    settings = {"data_seed": 0, "base_iterations": [2, 2, 2], "n_train": 2}
    common.write_json(archive / "campaign.json", {**settings, "commands": [["--parts", "configs"]],
                                                  "rows": [row("a", "summaries/all/a.json"),
                                                           row("b", str(archive / "summaries/all/b.json"))]})
    common.write_json(archive / "ledger.json", {"a": {"cpu_s": 60}, "b": {"cpu_s": 120}})
    common.write_json(work / "campaign.json", {**settings, "commands": [["--parts", "floors"]],
                                               "rows": [row("a", str(work / "summaries/all/a.json"))]})
    common.write_json(work / "ledger.json", {"a": {"cpu_s": 30}})

    assert archive_module.import_figures(archive, work, {**settings, "base_iterations": (2, 2, 2)},
                                         quality.merged_rows)
    merged = json.loads((work / "campaign.json").read_text())
    assert [r["label"] for r in merged["rows"]] == ["a", "b"]
    assert merged["commands"] == [["--parts", "configs"], ["--parts", "floors"]]
    assert json.loads((work / "ledger.json").read_text()) == {"a": {"cpu_s": 30}, "b": {"cpu_s": 120}}
    figures = report.Figures(work)
    assert [figures.metric(figures.summaries(r, "all"), "auroc") for r in merged["rows"]] == [[0.7], [0.5]]

    written = archive_module.export_figures(work, tmp_path / "out")  # the union, with paths under the work dir
    exported = json.loads((tmp_path / "out/campaign.json").read_text())
    assert exported["rows"][0]["seeds"]["0"]["summaries"]["all"] == "summaries/all/a.json"
    assert json.loads((tmp_path / "out/summaries/all/a.json").read_text())["dataset"]["auroc"] == 0.7
    assert tmp_path / "out/ledger.json" in written
    assert not archive_module.import_figures(tmp_path / "nothing", work, settings, quality.merged_rows)
    a, b, c = ["--parts", "grid"], ["--parts", "floors"], ["--parts", "configs"]
    assert archive_module.merged_commands([a, a], [a, a, b]) == [a, a, b]  # the work dir went on from the archive
    assert archive_module.merged_commands([a, a, b], [a]) == [a, a, b]  # the archive went on from the work dir
    assert archive_module.merged_commands([a, b], [c]) == [a, b, c]  # another machine's history
    with pytest.raises(SystemExit, match="data_seed: 0 there, 1 here"):
        archive_module.import_figures(archive, tmp_path / "w3", {**settings, "data_seed": 1}, quality.merged_rows)


def test_the_grid_of_a_generated_dataset_is_described_and_keeps_archives_apart(tmp_path):
    """--size: a campaign on clinical-grid scans says so in its tables and cannot import cpu-grid figures."""
    for sub in ("imagesTr", "imagesTs"):
        (tmp_path / "raw" / sub).mkdir(parents=True)
    (tmp_path / "raw/imagesTs/case_0000.nii.gz").write_bytes(b"")
    manifest = {"dataset": str(tmp_path / "raw"), "plans_json": str(tmp_path / "none.json"), "size": "full",
                "data_seed": 1}
    assert "size full, seed 1): 0 unlabeled training scans, 1 test scans" in report.dataset_description(manifest)
    assert "size cpu, seed 1" in report.dataset_description({k: v for k, v in manifest.items() if k != "size"})
    archive = tmp_path / "archive"
    common.write_json(archive / "campaign.json", {"size": "cpu", "data_seed": 1, "rows": []})
    with pytest.raises(SystemExit, match="size: 'cpu' there, 'full' here"):
        archive_module.import_figures(archive, tmp_path / "w", {"size": "full", "data_seed": 1}, quality.merged_rows)
    assert quality.build_parser().parse_args(["--work_dir", "w"]).size == "cpu"  # the demo's grid by default


def test_the_tables_say_when_their_steps_were_measured_on_several_machines(tmp_path):
    (tmp_path / "campaign.json").write_text(json.dumps({"rows": []}))
    ledger = {"a": {"machine": "cpu A, 2 cores"}, "b": {"machine": "cpu A, 2 cores"}, "c": {}}
    common.write_json(tmp_path / "ledger.json", ledger)
    assert report.step_machines(report.Figures(tmp_path)) == ""  # one machine (and old records that do not say)
    common.write_json(tmp_path / "ledger.json", {**ledger, "d": {"machine": "cpu B, 16 cores"}})
    line = report.step_machines(report.Figures(tmp_path))
    assert "cpu A, 2 cores: 2 steps" in line and "cpu B, 16 cores: 1 steps" in line and "not recorded: 1" in line


def test_the_repository_tables_come_with_the_repository_archive_unless_told_otherwise(tmp_path):
    def folder(*argv):
        return quality.figures_folder(quality.build_parser().parse_args(["--work_dir", str(tmp_path), *argv]))

    assert folder() == archive_module.ARCHIVE
    assert folder("-o", str(tmp_path / "R.md")) is None
    assert folder("--figures", "none") is None and folder("--figures", str(tmp_path)) == tmp_path.resolve()


def test_a_row_run_again_keeps_the_seeds_it_did_not_run_and_takes_the_new_ones():
    def row(label, **seeds):
        return {"part": "configs", "label": label, "setup": f"{label}_it1", "seeds": seeds}

    previous = [row("a", **{"0": "a0", "1": "a1"}), row("b", **{"0": "b0"})]
    current = [row("c", **{"0": "c0"}), row("a", **{"1": None, "2": "a2"})]
    assert quality.merged_rows(previous, current) == [row("a", **{"0": "a0", "1": None, "2": "a2"}),
                                                      row("b", **{"0": "b0"}), row("c", **{"0": "c0"})]
    assert quality.merged_rows([], current) == current and quality.merged_rows(previous, []) == previous


def test_untrained_models_load_as_trained_stages_with_the_trainers_initialisation(nnunet_env):
    from nnscreener.networks.dense_net import build_dense_net, load_dense_net
    from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=993, n_cases=1, shape_zyx=(16, 24, 24))
    folders = untrained.write_untrained_models("993", plans.plans_name, seed=7)

    assert [f.name for f in folders] == [f"{stage}__vicreg_d32__{plans.plans_name}"
                                         for stage in ("descriptor", "condition")]
    torch.manual_seed(7)
    expected = {"descriptor": build_dense_net(plans, 1),
                "condition": build_dense_net(plans, 2, masked_input=True)}  # as the condition trainer builds it
    for folder in folders:
        network, config = load_dense_net(folder)
        reference = expected[folder.name.split("__")[0]].state_dict()
        assert config.seed == 7 and network.state_dict().keys() == reference.keys()
        assert all(torch.equal(network.state_dict()[k], reference[k]) for k in reference)


def test_run_child_counts_the_cpu_time_of_waited_for_grandchildren(tmp_path):
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}], check=True)"
    timing = common.run_child([sys.executable, "-c", parent], {"PATH": "/usr/bin:/bin"}, tmp_path / "log.txt")

    assert timing["cpu_s"] >= 0.6 and timing["wall_s"] >= 0.6
    with pytest.raises(common.ChildFailed, match="exit code 3.*log.txt"):
        common.run_child([sys.executable, "-c", "import sys; sys.exit(3)"], {}, tmp_path / "log.txt")
    assert "sys.exit(3)" in (tmp_path / "log.txt").read_text()


def test_write_results_replaces_its_block_and_keeps_what_was_written_by_hand(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Speed benchmark\n\nratio 2.1\n")
    block = lambda n: f"{common.RESULTS_BEGIN}\nquality table {n}\n{common.RESULTS_END}\n"  # noqa: E731

    common.write_results(path, block(1))
    first = path.read_text()
    assert first.startswith("# Results\n\n## Speed benchmark\n\nratio 2.1\n")
    assert "quality table 1" in first and common.INTERPRETATION_PLACEHOLDER in first

    path.write_text(first.replace(common.INTERPRETATION_PLACEHOLDER, "Nodules win."))
    common.write_results(path, block(2))
    second = path.read_text()
    assert "quality table 2" in second and "quality table 1" not in second
    assert "ratio 2.1" in second and "Nodules win." in second
    assert second.count(common.RESULTS_BEGIN) == 1 and second.count(common.INTERPRETATION_TITLE) == 1


def test_configuration_rows_of_several_invocations_show_their_own_budgets_and_every_command(tmp_path):
    """campaign.json accumulates rows of invocations with other --config_scale values: each row says its steps."""
    def row(setup, iterations, auroc):
        summary = tmp_path / f"{setup}.json"
        summary.write_text(json.dumps({"dataset": {"auroc": auroc}}))
        return {"part": "configs", "label": "hist", "setup": setup, "config": "hist", "description": "d",
                "plans": "nnScreenerPlans_cpu", "iterations": iterations, "preset": report.preset_fingerprint(),
                "seeds": {"0": {"cost": {}, "summaries": {"all": str(summary)}}}}

    runs = [["--config_scale", "1"], ["--config_scale", "4"]]
    (tmp_path / "campaign.json").write_text(json.dumps({"rows": [row("hist_it2", [2, 2, 3], 0.61),
                                                                 row("hist_it8", [8, 8, 12], 0.72)],
                                                        "command": runs[1], "commands": runs}))
    figures = report.Figures(tmp_path)
    table = report.table_configs(figures, "all").splitlines()
    assert table[2].startswith("| hist | d | 2 / 2 / 3 | shared | 1 | 0.610 |")
    assert table[3].startswith("| hist | d | 8 / 8 / 12 | shared | 1 | 0.720 |")
    listed = report.commands(figures.campaign)
    assert "1. `python benchmarks/quality.py --config_scale 1`" in listed and "2. `" in listed
    assert report.commands({"command": runs[0]}) == "- Command: `python benchmarks/quality.py --config_scale 1`"


def test_a_screener_row_counts_the_condition_model_only_when_it_uses_it():
    class Trained:  # the steps of a setup whose descriptor and condition are trained (the grid shares them)
        def ssl(self, setup, seed):
            return ["train/s/descriptor", "train/s/condition"]

        def train(self, setup, seed, stage, variant, extra=()):
            return f"train/s/{stage}/{variant}"

    setup = quality.Setup("s", "default", "nnScreenerPlans_cpu", (2, 2, 3))
    cost = {c: quality.Campaign.screener(Trained(), quality.Row("grid", c, setup, c, "flow"), 0)
            for c in ("masking", "sincos", "none")}
    assert cost["masking"] == {"descriptor": "train/s/descriptor", "condition": "train/s/condition",
                               "density": "train/s/density/masking_flow"}
    assert cost["sincos"] == {"descriptor": "train/s/descriptor", "density": "train/s/density/sincos_flow"}
    assert set(cost["none"]) == {"descriptor", "density"}


def test_a_configuration_row_is_the_default_model_only_when_every_stage_resolves_to_its_settings(monkeypatch, tmp_path):
    from quality_configs import ConfigSpec

    blocks = quality.get_preset(quality.BASE_PRESET).density.flow_blocks
    density = lambda value: {"density": ("--set", f"density.flow_blocks={value}")}  # noqa: E731
    monkeypatch.setitem(quality.CONFIGS, "restated", ConfigSpec("d", stage_args=density(blocks), ssl_of="default"))
    monkeypatch.setitem(quality.CONFIGS, "changed", ConfigSpec("d", stage_args=density(blocks + 1), ssl_of="default"))
    monkeypatch.setitem(quality.CONFIGS, "rescored", ConfigSpec("d", models_of="restated",
                                                                predict_args=("--score", "latent")))
    monkeypatch.setitem(quality.CONFIGS, "linked", ConfigSpec("d", models_of="restated"))
    monkeypatch.setitem(quality.CONFIGS, "own_descriptor", ConfigSpec(
        "d", stage_args={"descriptor": ("--set", "ssl.augmentation.p_gamma=0")}, condition_of="default"))
    campaign = quality.Campaign.__new__(quality.Campaign)  # no dataset needed: settings only
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path), "--train_set", "ssl.batch_size=2"])

    def same(config, scale=4, part="configs", variant=quality.DEFAULT_VARIANT):
        return campaign.same_as_default(quality.Row(part, config, campaign.setup(config, scale), *variant))

    assert same("restated") and same("restated", scale=1) and same("linked") and same("default")
    assert not same("changed") and not same("rescored") and not same("own_descriptor")
    assert not same("restated", variant=("masking", "gaussian")) and not same("default", part="scaling")
    assert campaign.stage_setups(campaign.setup("linked", 4))["descriptor"].config == "default"


def test_a_configuration_sharing_models_is_meant_with_the_planning_overrides_of_their_plans(monkeypatch, tmp_path):
    """A density-only row on the SSL models of a configuration with its own plans (window_hist_both on
    window_hist) shares those plans and is meant with their planning overrides, not the bare preset's."""
    from quality_configs import ConfigSpec

    monkeypatch.setitem(quality.CONFIGS, "planned", ConfigSpec("d", plan_set=("network.descriptor_norm=layer",)))
    monkeypatch.setitem(quality.CONFIGS, "density_only", ConfigSpec(
        "d", stage_args={"density": ("--set", "density.flow_blocks=3")}, ssl_of="planned"))
    campaign = quality.Campaign.__new__(quality.Campaign)  # no dataset needed: settings only
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path)])
    setup = campaign.setup("density_only", 1)
    assert setup.plans == "nnScreenerPlans_cpu_planned" and quality.planning_config("density_only") == "planned"
    meant = campaign.resolved_config(setup, "density")
    assert meant.network.descriptor_norm == "layer" and meant.density.flow_blocks == 3
    assert campaign.resolved_config(campaign.setup("default", 1), "density").network.descriptor_norm != "layer"


def test_tables_show_the_default_model_by_budget_and_the_best_trained_method_per_kind(tmp_path):
    """A budget without a measured scaling row takes a configuration row with the default's settings; Table 4
    names the best trained method per kind and budget, starred when above the intensity floor."""
    today = report.preset_fingerprint()

    def row(part, label, iterations, nodule, same=False, method="screener", preset=today):
        summary = tmp_path / f"{part}_{label}_{iterations[0]}_{preset}.json"
        summary.write_text(json.dumps({"dataset": {"auroc": nodule},
                                       "per_kind": {"solid_lung_nodule": {"auroc": nodule}}}))
        return {"part": part, "label": label, "setup": f"{label}_{iterations[0]}", "config": label, "plans": "p",
                "description": label,
                "iterations": iterations, "method": method, "steps": sum(iterations), "same_as_default": same,
                "preset": preset, "seeds": {"0": {"cost": {}, "summaries": {"all": str(summary)}}}}

    x1, x4, x16 = [2, 2, 3], [8, 8, 12], [32, 32, 48]
    rows = [row("scaling", "1x", x1, 0.60), row("configs", "hist", x1, 0.99, same=True),
            row("configs", "hist", x4, 0.64, same=True), row("configs", "other", x4, 0.99),
            row("configs", "older", x16, 0.98, same=True, preset="an older one"),
            row("baselines", "baseline_ae 1x", x1, 0.75, method="baseline_ae"),
            row("baselines", "baseline_ae 4x", x4, 0.62, method="baseline_ae"),
            row("floors", "intensity floor", [0], 0.70)]
    (tmp_path / "campaign.json").write_text(json.dumps({"rows": rows, "base_iterations": x1,
                                                        "command": [], "protocols": ["all"]}))
    figures = report.Figures(tmp_path)

    assert [label for label, _ in report.default_model_rows(figures, "all")] == \
        ["1x", "4x (configuration hist, the same settings)"]
    scaling = report.table_scaling(figures, "all").splitlines()
    assert scaling[2].startswith("| 1x | 2 / 2 / 3 | 1 | 0.600 |")
    assert scaling[3].startswith("| 4x (configuration hist, the same settings) | 8 / 8 / 12 | 1 | 0.640 |")
    baselines = report.table_baselines(figures, "all")
    assert "| Screener (masking + flow) 4x (configuration hist, the same settings) | 8 + 8 + 12 | 1 | 0.640 |" \
        in baselines and "| baseline_ae 4x | 28 | 1 | 0.620 |" in baselines
    assert "| 1x | baseline_ae 0.750 * |" in baselines and "| 4x | Screener 0.640 |" in baselines
    # a row of an older preset: never today's default model at its budget, and marked where it is shown
    assert "16x" not in report.table_scaling(figures, "all") and "16x" not in baselines
    configs = report.table_configs(figures, "all")
    assert f"| older {report.OLDER_PRESET_MARK} |" in configs and f"| hist {report.OLDER_PRESET_MARK}" not in configs
    assert configs.endswith(report.OLDER_PRESET_NOTE) and report.OLDER_PRESET_NOTE not in baselines


def test_the_preset_fingerprint_changes_with_any_setting_of_the_preset(monkeypatch):
    import quality_configs
    from nnscreener.config import merge, parse_set_overrides

    today = quality_configs.preset_fingerprint()
    assert today == report.preset_fingerprint() == quality.preset_fingerprint() and len(today) == 12
    preset = quality_configs.get_preset(quality_configs.BASE_PRESET)
    changed = merge(preset, parse_set_overrides(["density.flow_blocks=" + str(preset.density.flow_blocks + 1)]))
    monkeypatch.setattr(quality_configs, "get_preset", lambda name: changed)
    assert quality_configs.preset_fingerprint() != today


def test_a_finished_stage_keeps_its_cost_only_while_its_folder_holds_the_model_it_was_measured_for(tmp_path):
    campaign = quality.Campaign.__new__(quality.Campaign)  # the ledger logic alone: no dataset, no training
    campaign.ledger = common.Ledger(tmp_path / "ledger.json")
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path)])
    folder = tmp_path / "descriptor"
    folder.mkdir()
    final = folder / quality.FINAL_CHECKPOINT
    final.write_bytes(b"model A")
    campaign.stage_dir = lambda *args: folder
    campaign.check_config = lambda *args: None
    setup = quality.Setup("s", "default", "nnScreenerPlans_cpu", (2, 2, 3))
    campaign.ledger.record("train/s/seed0/descriptor", cpu_s=60.0, model=common.file_fingerprint(final))
    campaign.ledger.record("train/s/seed1/descriptor", cpu_s=60.0)  # written before fingerprints: trusted

    assert campaign.train(setup, 0, "descriptor", "v") == "train/s/seed0/descriptor"
    assert campaign.train(setup, 1, "descriptor", "v") == "train/s/seed1/descriptor"
    assert campaign.ledger.get("train/s/seed0/descriptor")["cpu_s"] == 60.0
    final.write_bytes(b"model B, put here by hand")
    campaign.train(setup, 0, "descriptor", "v")
    assert campaign.ledger.get("train/s/seed0/descriptor") is None
    assert "train/s/seed0/descriptor" not in json.loads((tmp_path / "ledger.json").read_text())
    assert campaign.ledger.get("train/s/seed1/descriptor")["cpu_s"] == 60.0


def test_cells_show_the_mean_and_half_the_range_over_seeds():
    assert report.mean_spread([0.5, 0.7]) == pytest.approx((0.6, 0.1))
    assert report.cell([0.5, 0.7]) == "0.600 ± 0.100"
    assert report.cell([0.5]) == "0.500" and report.cell([]) == "-"


def test_probe_measures_change_at_masked_and_visible_voxels_in_random_pair_units():
    full = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [3.0, 4.0]])
    masked = full.clone()
    masked[0] = torch.tensor([0.0, 2.5])  # a hidden voxel moves by 2.5
    hidden = torch.tensor([True, True, False, False])
    assert probe.relative_change(full, masked, hidden, scale=5.0) == pytest.approx({"masked": 0.25, "visible": 0.0})
    assert probe.random_pair_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), 2000,
                                      torch.Generator().manual_seed(0)) == pytest.approx(2.5, abs=0.3)


def test_probe_uses_the_training_mask_sampler_on_each_input_kind():
    from nnscreener.config import MaskingConfig

    class Echo(torch.nn.Module):  # features = the first input channel: the descriptor sees image * mask
        def __init__(self, in_channels):
            super().__init__()
            self.in_channels = in_channels

        def forward(self, x):
            return x[:, :1]

    view = torch.ones(1, 1, 8, 8, 8)
    view[..., ::2] = 3.0  # random voxel pairs differ by 2 half the time: mean distance 1
    out = probe.masking_probe({"descriptor": Echo(1), "condition": Echo(2)}, [view],
                              MaskingConfig(probability=0.5, ratio=0.5, block_fraction=0.5), draws=3, seed=1,
                              n_random_pairs=20000)
    for name in ("descriptor", "condition"):  # a hidden voxel drops to 0: change |view| / 1 = 2 on average
        assert out[name]["masked"] == pytest.approx(2.0, rel=0.1) and out[name]["visible"] == 0.0


def test_crop_consistency_is_zero_per_voxel_and_sees_crop_wide_normalisation():
    assert probe.overlapping_crops(48, 8) == (slice(0, 32), slice(16, 48), slice(16, 32), slice(0, 16))
    with pytest.raises(ValueError):
        probe.overlapping_crops(8, 8)

    class PerVoxel(torch.nn.Module):  # features depend on the voxel alone: identical in both crops
        in_channels = 1

        def forward(self, x):
            return torch.cat([x, x ** 2], dim=1)

    class CropNorm(PerVoxel):  # InstanceNorm-like: shifted by the crop's mean
        def forward(self, x):
            return super().forward(x) - x.mean()

    gen = torch.Generator().manual_seed(0)
    view = torch.rand(1, 1, 8, 8, 48, generator=gen)
    view[..., 24:] += 1.0  # the two crops see different halves: different means
    out = probe.crop_consistency({"voxel": PerVoxel(), "crop": CropNorm()}, [view], stride=8)
    assert out["voxel"] == 0.0
    assert out["crop"] > 0.1

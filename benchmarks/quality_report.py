"""Tables of a quality campaign (``quality.py``) from its work dir alone: ``campaign.json`` (rows and where their
figures are), ``ledger.json`` (CPU and wall time of every step) and the evaluation summaries. Writes the generated
block of ``RESULTS.md`` (between its begin / end markers; the hand-written interpretation section is kept) and
``W/tables.json`` (the aggregated figures).

Every trained row is run once per seed: a cell shows the mean over the seeds with a summary and ``± half the
range`` (max - min) / 2 when there are several; ``n`` says how many seeds it has. CPU minutes are user + system
time of the children and their workers, averaged over the seeds.

    python benchmarks/quality_report.py --work_dir bench_quality [-o benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common  # noqa: E402
import quality_archive  # noqa: E402
from quality_configs import BASE_PRESET, preset_fingerprint  # noqa: E402
from nnscreener import stages  # noqa: E402
from nnscreener.evaluation.local_contrast import RING_MM  # noqa: E402

METRICS = ("auroc", "partial_auroc", "aupro", "local_auroc")
#: Their column titles (local AUROC: each lesion against the normal tissue around it, nnScreener_evaluate).
METRIC_COLUMNS = "AUROC | AUROC@0.3 | AUPRO@0.3 | local AUROC"
NODULE_KIND = "solid_lung_nodule"
#: Cost entries of a row that count as training (a Screener model's three stages, the untrained control's writing,
#: a baseline's one stage).
TRAIN_STEPS = ("untrained", *stages.STAGE_NAMES)
PROTOCOL_TEXT = {"all": "positives all lesion voxels, negatives a fixed number of sampled non-lesion body voxels per "
                        "scan (nnScreener_evaluate's default)",
                 "balanced": "per scan up to 1000 lesion and 1000 non-lesion body voxels (the authors' protocol)"}
#: Marks a row measured at another cpu preset than today's (:func:`at_todays_preset`), explained under its table.
OLDER_PRESET_MARK = "†"
OLDER_PRESET_NOTE = (f"{OLDER_PRESET_MARK} measured at an earlier {BASE_PRESET} preset than today's (or before the "
                     "campaign recorded the preset): its `default` settings, and those a configuration does not set "
                     "itself, were other than today's; the interpretation sections below say which.")


def mean_spread(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and half range ``(max - min) / 2`` of the values; ``(None, None)`` when there are none."""
    if not values:
        return None, None
    return sum(values) / len(values), (max(values) - min(values)) / 2


def cell(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± half range`` (just the value for one seed), ``-`` for none."""
    mean, spread = mean_spread(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {spread:.{digits}f}"


class Figures:
    """Reads the summaries and timings of the campaign's rows."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.campaign = json.loads((work_dir / "campaign.json").read_text())
        self.ledger = common.Ledger(work_dir / "ledger.json")

    def rows(self, part: str) -> List[Dict[str, Any]]:
        return [r for r in self.campaign["rows"] if r["part"] == part]

    def summaries(self, row: Mapping[str, Any], protocol: str) -> List[Dict[str, Any]]:
        """The row's evaluation summaries under ``protocol``, one per seed that has one."""
        out = []
        for entry in row["seeds"].values():  # a relative path is relative to the work dir (quality_archive.py)
            path = self.work_dir / (entry or {}).get("summaries", {}).get(protocol, "/nonexistent")
            if path.is_file():
                out.append(json.loads(path.read_text()))
        return out

    @staticmethod
    def metric(summaries: Sequence[Mapping[str, Any]], name: str, kind: Optional[str] = None) -> List[float]:
        block = (lambda s: s.get("dataset", {})) if kind is None else (lambda s: s.get("per_kind", {}).get(kind, {}))
        return [block(s)[name] for s in summaries if block(s).get(name) is not None]

    def cpu_minutes(self, row: Mapping[str, Any], stages: Sequence[str]) -> List[float]:
        """Per seed, the CPU minutes of the row's ``stages`` (e.g. descriptor, condition, density); seeds with a
        stage not measured in this work dir (e.g. finished before the ledger existed) are left out."""
        out = []
        for entry in row["seeds"].values():
            records = [self.ledger.get((entry or {}).get("cost", {}).get(s, "")) for s in stages
                       if s in (entry or {}).get("cost", {})]
            if records and all(r is not None and r.get("cpu_s") is not None for r in records):
                out.append(sum(r["cpu_s"] for r in records) / 60)
        return out

    def train_and_predict(self, row: Mapping[str, Any]) -> Tuple[List[float], List[float]]:
        """CPU minutes per seed of training (:data:`TRAIN_STEPS`) and of computing the maps (a floor's maps count
        as prediction)."""
        return self.cpu_minutes(row, TRAIN_STEPS), self.cpu_minutes(row, ["predict", "floor"])

    def intensity_floor(self, protocol: str) -> List[Dict[str, Any]]:
        """The intensity floor's summaries under ``protocol`` ([] when part floors was not run)."""
        floors = [r for r in self.rows("floors") if r["label"].startswith("intensity")]
        return self.summaries(floors[0], protocol) if floors else []

    def kinds(self, protocol: str) -> List[str]:
        found: Dict[str, None] = {}
        for row in self.campaign["rows"]:
            for s in self.summaries(row, protocol):
                found.update(dict.fromkeys(s.get("per_kind", {})))
        return list(found)


# ---------------------------------------------------------------------------------------------------- tables
def at_todays_preset(row: Mapping[str, Any]) -> bool:
    """Whether a row was measured at today's cpu preset (the fingerprint quality.py records with every trained
    row); floors do not depend on it."""
    return row["part"] == "floors" or row.get("preset") == preset_fingerprint()


def marked(name: str, row: Mapping[str, Any]) -> str:
    """A row's name in the tables, with :data:`OLDER_PRESET_MARK` when it was measured at an older preset."""
    return name if at_todays_preset(row) else f"{name} {OLDER_PRESET_MARK}"


def with_preset_note(lines: List[str], rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """A table's lines, followed by :data:`OLDER_PRESET_NOTE` when one of its rows is marked."""
    return lines + ([] if all(map(at_todays_preset, rows)) else ["", OLDER_PRESET_NOTE])


def stage_steps(iterations: Sequence[int]) -> str:
    """Optimizer steps of descriptor / condition / density, as the tables write them."""
    return " / ".join(map(str, iterations))


def metric_cells(fig: Figures, row: Mapping[str, Any], protocol: str) -> List[str]:
    summaries = fig.summaries(row, protocol)
    return [str(len(summaries))] + [cell(fig.metric(summaries, m)) for m in METRICS]


def table_methods(fig: Figures, protocol: str) -> str:
    rows = fig.rows("grid") + fig.rows("untrained") + fig.rows("floors")
    if not rows:
        return "_parts grid / untrained / floors not run_"
    lines = [f"| method | n | {METRIC_COLUMNS} | train CPU min | predict CPU min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        train, predict = fig.train_and_predict(row)
        default = " (default)" if row.get("variant") == "masking_flow" and row["part"] == "grid" else ""
        name = marked(f"Screener: {row['label']}{default}" if row["part"] == "grid" else row["label"], row)
        lines.append(f"| {name} | " + " | ".join(metric_cells(fig, row, protocol)) +
                     f" | {cell(train, 1)} | {cell(predict, 1)} |")
    named = [(marked(row["label"], row), row) for row in rows]
    return "\n".join(with_preset_note(lines + per_kind_table(fig, named, protocol), rows))


def table_configs(fig: Figures, protocol: str) -> str:
    rows = fig.rows("configs")
    if not rows:
        return "_part `configs` not run_"
    lines = [f"| config | description | steps | plan CPU min | n | {METRIC_COLUMNS} | train CPU min | "
             "predict CPU min |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        train, predict = fig.train_and_predict(row)
        plan = fig.ledger.get(f"plan/{row['plans']}")
        plan_text = "shared" if not row["plans"].endswith(f"_{row['config']}") else \
            common.fmt(None if plan is None else plan["cpu_s"] / 60, 1)
        # rows of several invocations may have other budgets
        lines.append(f"| {marked(row['label'], row)} | {row['description']} | {stage_steps(row['iterations'])} | "
                     f"{plan_text} | " + " | ".join(metric_cells(fig, row, protocol)) +
                     f" | {cell(train, 1)} | {cell(predict, 1)} |")
    return "\n".join(with_preset_note(lines, rows))


def budget(row: Mapping[str, Any], base_iterations: Optional[Sequence[int]]) -> str:
    """A row's budget as a multiple of the campaign's 1x steps, e.g. ``4x`` (``-`` when either is not recorded)."""
    if not base_iterations or not row.get("iterations"):
        return "-"
    return f"{row['iterations'][0] / base_iterations[0]:g}x"


def default_model_rows(fig: Figures, protocol: str) -> List[Tuple[str, Dict[str, Any]]]:
    """The default model by budget, as ``(budget label, row)`` in budget order: the rows of part scaling, and at a
    budget where no scaling row has figures, a configuration row that quality.py found to have the default's
    settings (``same_as_default``, e.g. ``intensity_hist8`` since the cpu preset adopted the histogram) at today's
    preset (an older preset's default is another model)."""
    named = [(marked(row["label"], row), row) for row in fig.rows("scaling")]
    measured = {tuple(row["iterations"]) for row in fig.rows("scaling") if fig.summaries(row, protocol)}
    for row in fig.rows("configs"):
        if row.get("same_as_default") and at_todays_preset(row) and fig.summaries(row, protocol) and \
                tuple(row["iterations"]) not in measured:
            measured.add(tuple(row["iterations"]))
            label = f"{budget(row, fig.campaign.get('base_iterations'))} (configuration {row['label']}, the same " \
                    "settings)"
            named.append((label, row))
    return sorted(named, key=lambda item: sum(item[1]["iterations"]))


def table_scaling(fig: Figures, protocol: str) -> str:
    rows = default_model_rows(fig, protocol)
    if not rows:
        return "_part `scaling` not run_"
    floor = fig.metric(fig.intensity_floor(protocol), "auroc", NODULE_KIND)
    lines = [f"| budget | steps: descriptor / condition / density | n | {METRIC_COLUMNS} | "
             f"{NODULE_KIND} AUROC | intensity floor, {NODULE_KIND} | train CPU min | predict CPU min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in rows:
        train, predict = fig.train_and_predict(row)
        nodule = fig.metric(fig.summaries(row, protocol), "auroc", NODULE_KIND)
        lines.append(f"| {label} | {stage_steps(row['iterations'])} | " +
                     " | ".join(metric_cells(fig, row, protocol)) +
                     f" | {cell(nodule)} | {cell(floor)} | {cell(train, 1)} | {cell(predict, 1)} |")
    return "\n".join(with_preset_note(lines, [row for _, row in rows]))


#: The per-kind tables: metric, its name and the table's title.
PER_KIND = (("auroc", "voxel AUROC", "Voxel AUROC per lesion kind (against normal voxels anywhere in the body):"),
            ("local_auroc", "local AUROC", f"Local AUROC per lesion kind (each lesion against the normal tissue "
                            f"{RING_MM[0]:g}-{RING_MM[1]:g} mm around it; the same under both protocols):"))


def per_kind_table(fig: Figures, rows: Sequence[Tuple[str, Mapping[str, Any]]], protocol: str) -> List[str]:
    """Voxel AUROC and local AUROC per lesion kind, one line per ``(name, row)``; [] when no summary has kinds."""
    kinds = fig.kinds(protocol)
    if not kinds:
        return []
    lines: List[str] = []
    for metric, _, title in PER_KIND:
        lines += ["", title, "", "| method | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for name, row in rows:
            summaries = fig.summaries(row, protocol)
            lines.append(f"| {name} | " + " | ".join(cell(fig.metric(summaries, metric, k)) for k in kinds) + " |")
    return lines


def table_baselines(fig: Figures, protocol: str) -> str:
    """The baselines beside the default model (:func:`default_model_rows`) at the same budgets, the floors, and the
    best trained method per lesion kind and budget."""
    if not fig.rows("baselines"):
        return "_part `baselines` not run_"
    screener = [(f"Screener (masking + flow) {label}", r) for label, r in default_model_rows(fig, protocol)]
    named = screener + [(marked(r["label"], r), r) for r in fig.rows("baselines") + fig.rows("floors")]
    lines = [f"| method | optimizer steps | n | {METRIC_COLUMNS} | train CPU min | predict CPU min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in named:
        train, predict = fig.train_and_predict(row)
        if row["part"] == "floors":
            steps = "-"
        elif row["part"] in ("scaling", "configs"):  # the default model (default_model_rows): its three stages
            steps = " + ".join(map(str, row["iterations"]))
        else:
            steps = str(row.get("steps", "-"))
        lines.append(f"| {name} | {steps} | " + " | ".join(metric_cells(fig, row, protocol)) +
                     f" | {cell(train, 1)} | {cell(predict, 1)} |")
    trained = [("Screener", r) for _, r in screener]
    trained += [(r["label"].rsplit(" ", 1)[0], r) for r in fig.rows("baselines")]  # "baseline_ae 4x" -> baseline_ae
    return "\n".join(with_preset_note(lines + per_kind_table(fig, named, protocol) +
                                      best_per_kind(fig, trained, protocol), [row for _, row in named]))


def best_per_kind(fig: Figures, methods: Sequence[Tuple[str, Mapping[str, Any]]], protocol: str) -> List[str]:
    """Per budget and lesion kind, the trained method with the highest mean over its seeds, for the voxel and the
    local AUROC; a ``*`` marks a winner above the intensity floor. ``methods``: ``(method name, row)``, the
    rows of one budget sharing their ``iterations``. [] when no summary has kinds."""
    kinds, floor = fig.kinds(protocol), fig.intensity_floor(protocol)
    budgets: Dict[Tuple[int, ...], List[Tuple[str, Mapping[str, Any]]]] = {}
    for name, row in methods:
        budgets.setdefault(tuple(row.get("iterations", ())), []).append((name, row))
    if not kinds or not budgets:
        return []
    lines: List[str] = []
    for metric, metric_name, _ in PER_KIND:
        lines += ["", f"Best trained method per lesion kind and budget, {metric_name} (mean over the seeds; * "
                      "above the intensity floor):", "",
                  "| budget | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for iterations, rows in sorted(budgets.items(), key=lambda item: sum(item[0])):
            cells = [winner_cell(fig, rows, protocol, metric, kind, floor) for kind in kinds]
            lines.append(f"| {budget(rows[0][1], fig.campaign.get('base_iterations'))} | " + " | ".join(cells) + " |")
    return lines


def winner_cell(fig: Figures, rows: Sequence[Tuple[str, Mapping[str, Any]]], protocol: str, metric: str, kind: str,
                floor: Sequence[Mapping[str, Any]]) -> str:
    """``name value`` of the ``(name, row)`` with the highest mean ``metric`` on lesion kind ``kind``, `` *`` when
    it is above the intensity floor's (``floor``: its summaries); ``-`` when no row has the figure."""
    means = [(mean_spread(fig.metric(fig.summaries(row, protocol), metric, kind))[0], name) for name, row in rows]
    means = [(value, name) for value, name in means if value is not None]
    if not means:
        return "-"
    value, winner = max(means)
    bar = mean_spread(fig.metric(floor, metric, kind))[0]
    return f"{winner} {value:.3f}" + (" *" if bar is not None and value > bar else "")


def step_machines(fig: Figures) -> str:
    """Which machines measured the ledger's steps (a campaign continued on a fresh machine mixes them), with counts;
    empty when all steps that say it were measured on one."""
    counts: Dict[str, int] = {}
    for record in fig.ledger.records.values():
        machine = record.get("machine", "not recorded")
        counts[machine] = counts.get(machine, 0) + 1
    if len([m for m in counts if not m.startswith("not recorded")]) < 2:
        return ""
    return "- Steps measured on several machines (CPU minutes compare only within one): " + "; ".join(
        f"{machine}: {n} steps" for machine, n in sorted(counts.items()))


def table_steps(fig: Figures) -> str:
    lines = ["| step | wall min | CPU min | note |", "|---|---:|---:|---|"]
    for step, record in sorted(fig.ledger.records.items()):
        note = "resumed: time before the interruption not counted" if record.get("resumed") else ""
        lines.append(f"| {step} | {record['wall_s'] / 60:.2f} | {record['cpu_s'] / 60:.2f} | {note} |")
    return "\n".join(lines)


def dataset_description(c: Mapping[str, Any]) -> str:
    """The dataset and plans of a campaign manifest, read from its raw folder and plans file; on a machine without
    them (figures imported from an archive) the description the campaign stored when it ran."""
    raw = Path(c["dataset"])
    if not raw.is_dir() and c.get("dataset_text"):
        return c["dataset_text"]
    n_train, n_test = (len(list((raw / sub).glob("*.nii.gz"))) for sub in ("imagesTr", "imagesTs"))
    settings = ""
    plans_json = Path(c["plans_json"])
    if plans_json.is_file():
        block = json.loads(plans_json.read_text()).get("nnscreener", {})
        net, pre = block.get("network", {}), block.get("preprocessing", {})
        settings = (f"; plans `{plans_json.stem}`: spacing {pre.get('spacing_xyz')} mm (x, y, z), patch "
                    f"{net.get('patch_size_xyz')} voxels (x, y, z), UNet base width {net.get('base_num_features')} "
                    f"(max {net.get('max_num_features')}), d = {net.get('embedding_dim')}, "
                    f"CLAHE {pre.get('use_clahe')}, HU window kept beside it {pre.get('keep_window_channel', False)}")
    source = "the demo's" if c.get("reused_demo") else f"generated with the demo's generator, size " \
                                                        f"{c.get('size', 'cpu')}, seed {c.get('data_seed')}"
    return f"`{raw}` (built-in synthetic CT, {source}): {n_train} unlabeled training scans, {n_test} test scans " \
           f"with lesion masks{settings}"


def commands(campaign: Mapping[str, Any]) -> str:
    """The invocations whose rows the tables show (``campaign.json`` accumulates them), oldest first."""
    runs = quality_archive.commands_of(campaign)
    if len(runs) == 1:
        return f"- Command: `python benchmarks/quality.py {shlex.join(runs[0])}`"
    return "\n".join([f"- Commands (the rows of {len(runs)} invocations, oldest first; a row run again takes "
                      "the seeds of its latest run):"] +
                     [f"  {i}. `python benchmarks/quality.py {shlex.join(run)}`" for i, run in enumerate(runs, 1)])


def markdown(fig: Figures, machine: Mapping[str, str]) -> str:
    c = fig.campaign
    body = [
        common.RESULTS_BEGIN,
        "## Quality benchmark (synthetic CT, CPU)",
        "",
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- Machine: {machine['cpu']}; {machine['cores']} cores; torch {machine['torch']}, nnunetv2 "
        f"{machine['nnunetv2']}, Python {machine['python']} ({machine['os']})",
        commands(c),
        *filter(None, [step_machines(fig)]),
        f"- Dataset: {dataset_description(c)}",
        f"- Budget: 1x = {stage_steps(c['base_iterations'])} optimizer steps of descriptor / condition / "
        f"density (nnScreener_demo's default budget: {c['demo_iterations']}); one child process at a time with "
        f"OMP_NUM_THREADS={c['threads']}; CPU minutes = user + system time of the step's process and its workers "
        f"(--num_processes {c['num_processes']})",
        f"- Seeds: {' '.join(map(str, c['seeds']))} in the latest invocation (`--set seed=N`: SSL and density "
        f"training); cells are the mean over the row's n seeds with a summary ± half the range (max - min) / 2",
        "- Metrics: voxel AUROC, AUROC up to FPR 0.3 (/0.3), AUPRO up to FPR 0.3 (/0.3, 26-connected regions), "
        "pooled over the test set",
        f"- Raw figures: `{fig.work_dir}` (campaign.json, ledger.json, summaries/<protocol>/*.json, tables.json)"
        + (f"; without models also in `{c['figures']}`, which a campaign on a fresh machine imports"
           if c.get("figures") else ""),
    ]
    for protocol in c["protocols"]:
        title = f"evaluation protocol `{protocol}`"
        body += ["", f"### Evaluation protocol `{protocol}`: {PROTOCOL_TEXT.get(protocol, protocol)}", "",
                 f"#### Table 1: Table 3 grid at 1x, untrained control, floors ({title})", "",
                 table_methods(fig, protocol), "",
                 f"#### Table 2: configurations, AUROC against CPU minutes ({title})", "",
                 "Steps: descriptor / condition / density.", "",
                 table_configs(fig, protocol), "",
                 f"#### Table 3: scaling of the default model, masking + flow ({title})", "",
                 table_scaling(fig, protocol), "",
                 f"#### Table 4: baselines at the default model's budgets ({title})", "",
                 "A baseline at a budget takes as many optimizer steps as the default model's three stages together "
                 "(batch sizes: the cpu preset's, 4 patches or image pairs, unless --train_set changed them); the CPU "
                 "minutes say what each really cost.", "",
                 table_baselines(fig, protocol)]
    body += ["", "### Step timings", "", table_steps(fig), common.RESULTS_END]
    return "\n".join(body) + "\n"


def aggregated(fig: Figures) -> Dict[str, Any]:
    """``{protocol: {part: {label: {metric: [mean, half range, n]}}}}`` plus CPU minutes, for tables.json."""
    out: Dict[str, Any] = {}
    for protocol in fig.campaign["protocols"]:
        for row in fig.campaign["rows"]:
            summaries = fig.summaries(row, protocol)
            train, predict = fig.train_and_predict(row)
            entry = {m: [*mean_spread(fig.metric(summaries, m)), len(summaries)] for m in METRICS}
            entry["per_kind_auroc"] = {k: [*mean_spread(fig.metric(summaries, "auroc", k))]
                                       for k in fig.kinds(protocol)}
            entry.update(train_cpu_min=[*mean_spread(train)], predict_cpu_min=[*mean_spread(predict)])
            out.setdefault(protocol, {}).setdefault(row["part"], {})[row["label"]] = entry
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/quality_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", type=Path, required=True, help="the campaign's --work_dir")
    p.add_argument("-o", "--output", type=Path, default=common.REPO / "benchmarks" / "RESULTS.md",
                   help="markdown file for the tables (default benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    fig = Figures(args.work_dir.resolve())
    block = markdown(fig, common.machine_description())
    common.write_results(args.output, block)
    common.write_json(fig.work_dir / "tables.json", aggregated(fig))
    print("\n" + block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

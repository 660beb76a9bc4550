"""Quality campaign on the demo's synthetic CT dataset: the paper's Table 3 grid, an untrained control, the floors,
configurations against CPU minutes and a scaling curve, each trained with several seeds; then
``quality_report.py`` writes the tables into ``benchmarks/RESULTS.md``.

Every model goes through the user-facing CLIs, one child process at a time (``nnScreener_train`` for descriptor,
condition and density on ``-device cpu`` with ``--set seed=N``, ``nnScreener_predict`` on ``imagesTs``,
``nnScreener_evaluate -img imagesTs`` once per ``--protocols`` entry), each with ``OMP_NUM_THREADS=--threads``;
the wall-clock and CPU time (user + system of the child and the workers it waited for) of every step go to the
ledger.

Parts (``--parts``): ``grid`` (condition none / sincos / masking x density gaussian / flow at 1x), ``untrained``
(random descriptor and condition networks from ``untrained_models.py``, masking + flow density trained on them),
``floors``
(``nnscreener.evaluation.floors``), ``scaling`` (masking + flow at ``--scales`` x 1x), ``configs`` (the
configurations of :data:`CONFIGS` at ``--config_scale`` x 1x), ``baselines`` (the ``--baselines`` rows of
:data:`BASELINES` at ``--scales`` x 1x, predicted with ``nnScreener_predict --method``). 1x is
``--base_iterations`` (default: the demo's); a baseline at a budget gets as many optimizer steps as the three
Screener stages together at that budget (the CPU minutes each really took are in the tables).

Layout of ``--work_dir W``: ``nnUNet_raw`` / ``nnUNet_preprocessed`` (unless ``--reuse_demo``), ``results/<setup>/
seed<N>/`` (one ``nnUNet_results`` root per setup and seed, e.g. ``default_it180-180-240/seed0``),
``predictions/<setup>/seed<N>/<variant>/``, ``summaries/<protocol>/*.json``, ``logs/``, ``ledger.json`` (every
finished step: timings, fingerprints) and ``campaign.json`` (the rows of the tables and where their figures are,
accumulated over invocations: a later one adds its rows and replaces only the seeds it ran again).
Re-running skips finished stages (``checkpoint_final.pth``), predictions and evaluations and resumes interrupted
training with ``--c``; ``quality_report.py --work_dir W`` rebuilds the tables from those files alone. Those files
without the models also go to ``--figures`` (quality_archive.py; by default the repository's
``benchmarks/figures/quality`` when the tables go into the repository's RESULTS.md), and a campaign imports them
first: on a fresh machine its tables keep every earlier row, and a row run again is retrained there. A stage whose
finished model (its ``config.json``) or whose plans differ from what its row means (today's cpu preset with the
row's arguments) is refused with the differing fields (the row fails, the others run), so ``default`` never
measures an older preset's models; every trained row records the fingerprint of the preset it was measured at
(``quality_configs.preset_fingerprint``), and the tables mark the rows of an older preset.

    python benchmarks/quality.py --work_dir bench_quality --reuse_demo nnscreener_demo
    python benchmarks/quality.py --work_dir /tmp/qtiny --n_train 3 --n_test 2 --base_iterations 2 --parts scaling \\
        --scales 1 -o /tmp/qtiny/RESULTS.md            # a smoke run of the logic
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common  # noqa: E402
import quality_archive  # noqa: E402
import quality_report  # noqa: E402
from quality_configs import BASE_PRESET, CONFIGS, preset_fingerprint  # noqa: E402
from nnscreener import paths, stages  # noqa: E402
from nnscreener.checkpoints import FINAL_CHECKPOINT, LATEST_CHECKPOINT  # noqa: E402
from nnscreener.config import get_preset  # noqa: E402
from nnscreener.density.conditions import condition_option  # noqa: E402
from nnscreener.demo import BASE_ITERATIONS as DEMO_ITERATIONS  # noqa: E402
from nnscreener.synthetic.patient import SIZES  # noqa: E402

BASE_PLANS = "nnScreenerPlans_cpu"
SSL_STAGES = ("descriptor", "condition")
GRID = tuple((condition, density) for condition in ("none", "sincos", "masking") for density in ("gaussian", "flow"))
DEFAULT_VARIANT = ("masking", "flow")
PARTS = ("grid", "untrained", "floors", "scaling", "configs", "baselines")
RESULTS = common.REPO / "benchmarks" / "RESULTS.md"


@dataclass(frozen=True)
class Baseline:
    """A row of part ``baselines``: a baseline method, trained with extra ``--set`` overrides of its stage."""

    method: str
    overrides: Tuple[str, ...] = ()

    def train_args(self) -> Tuple[str, ...]:
        return tuple(common.set_args(self.overrides))


#: The rows of part ``baselines`` (``--baselines``): every ``baseline_*`` method of the stage registry as
#: configured, then variants (a variant trains into its own result folder, named by its trainer's ``variant_for``).
BASELINES: Dict[str, Baseline] = {
    **{m: Baseline(m) for m in stages.METHODS if m.startswith("baseline_")},
    "baseline_synthetic_visible": Baseline("baseline_synthetic", ("baseline_synthetic.target=visible",)),
}
FLOORS = ("intensity", "random")


class SettingsDiffer(Exception):
    """A stage's finished model or plans have other settings than its row means; the row is skipped."""


@dataclass(frozen=True)
class Setup:
    """A configuration at a budget: its plans, steps per stage (descriptor, condition, density), training args."""

    name: str
    config: str
    plans: str
    iterations: Tuple[int, int, int]
    train_args: Tuple[str, ...] = ()
    untrained: bool = False
    scale: float = 1.0

    def iterations_of(self, stage: str) -> int:
        """A Screener stage's steps; a baseline's: those of the three Screener stages together."""
        return self.iterations[paths.STAGES.index(stage)] if stage in paths.STAGES else sum(self.iterations)

    def args_of(self, stage: str) -> Tuple[str, ...]:
        """``nnScreener_train`` arguments of a stage: the configuration's for all stages, then its own."""
        return (*self.train_args, *CONFIGS[self.config].stage_args.get(stage, ()))


@dataclass(frozen=True)
class Row:
    """One line of a table: a density model of a setup, trained, predicted and evaluated once per seed."""

    part: str
    label: str
    setup: Setup
    condition: str
    density: str
    method: str = stages.DEFAULT_METHOD
    baseline_variant: str = ""
    train_args: Tuple[str, ...] = ()  # a baseline row's own nnScreener_train arguments

    @property
    def stage(self) -> str:
        """The stage whose result folder scores the scans (density, or the baseline's own)."""
        return stages.method_stage(self.method).name

    @property
    def variant(self) -> str:
        """That folder's variant (``masking_flow``; a baseline's, e.g. ``l1``)."""
        return self.baseline_variant or paths.density_variant(self.condition, self.density)

    @property
    def key(self) -> str:
        """The row's name in prediction folders and summaries: the variant, prefixed by a baseline's stage."""
        return self.variant if self.method == stages.DEFAULT_METHOD else f"{self.stage}__{self.variant}"


class Campaign:
    """Runs the steps of the requested rows one after the other and records where their figures are."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work_dir: Path = args.work_dir.resolve()
        self.ledger = common.Ledger(self.work_dir / "ledger.json")
        demo = args.reuse_demo.resolve() if args.reuse_demo else None
        self.raw_root = demo / "nnUNet_raw" if demo else self.work_dir / "nnUNet_raw"
        self.base_pre_root = demo / "nnUNet_preprocessed" if demo else self.work_dir / "nnUNet_preprocessed"
        self.own_pre_root = self.work_dir / "nnUNet_preprocessed"
        self.protocol_flag = evaluate_supports_protocol()
        if not self.protocol_flag and set(args.protocols) != {"all"}:
            raise SystemExit(f"--protocols {' '.join(args.protocols)}: this nnScreener_evaluate has no --protocol "
                             f"flag; only 'all' can be evaluated")
        self.raw_dir = self.prepare_dataset()
        self.failed: Dict[str, str] = {}
        self.machine = common.machine_label()

    # ------------------------------------------------------------------ folders
    def prepare_dataset(self) -> Path:
        """The raw dataset: the demo's, an earlier run's, or generated with the demo's generator and seed."""
        existing = sorted(self.raw_root.glob(f"Dataset{self.args.dataset_id:03d}_*"))
        if existing:
            return existing[0]
        if self.args.reuse_demo:
            raise SystemExit(f"--reuse_demo: no Dataset{self.args.dataset_id:03d}_* in {self.raw_root}")
        from nnscreener.synthetic.generator import generate_dataset

        self.raw_root.mkdir(parents=True, exist_ok=True)
        return generate_dataset(self.raw_root, dataset_id=self.args.dataset_id, n_train=self.args.n_train,
                                n_test=self.args.n_test, size=self.args.size, seed=self.args.data_seed,
                                num_processes=self.args.num_processes)

    def pre_root(self, plans: str) -> Path:
        """The base plans live in the (possibly the demo's) base root; other plans in ``W``'s own root."""
        return self.base_pre_root if plans == BASE_PLANS else self.own_pre_root

    def results_root(self, setup: Setup, seed: int) -> Path:
        return self.work_dir / "results" / setup.name / f"seed{seed}"

    def stage_dir(self, setup: Setup, seed: int, stage: str, variant: str) -> Path:
        return self.results_root(setup, seed) / self.raw_dir.name / f"{stage}__{variant}__{setup.plans}"

    def prediction_dir(self, row: Row, seed: int) -> Path:
        return self.work_dir / "predictions" / row.setup.name / f"seed{seed}" / row.key

    def summary_file(self, protocol: str, key: str) -> Path:
        return self.work_dir / "summaries" / protocol / (key.replace("/", "__") + ".json")

    def env(self, plans: str, results: Optional[Path] = None) -> Dict[str, str]:
        return common.child_env(self.args.threads, nnUNet_raw=str(self.raw_root),
                                nnUNet_preprocessed=str(self.pre_root(plans)),
                                nnUNet_results=str(results or self.work_dir / "results"),
                                nnUNet_n_proc_DA=None if self.args.n_proc_da is None else str(self.args.n_proc_da))

    def step(self, step_id: str, argv: Sequence[str], env: Dict[str, str], **extra) -> None:
        """Runs one child (at most once per invocation when it fails) and records its timing."""
        if step_id in self.failed:
            raise common.ChildFailed(self.failed[step_id])
        print(f"[run] {step_id}", flush=True)
        log = self.work_dir / "logs" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", step_id) + ".log")
        try:
            timing = common.run_child(argv, env, log)
        except common.ChildFailed as e:
            self.failed[step_id] = str(e)
            raise
        self.ledger.record(step_id, **timing, machine=self.machine, **extra)
        print(f"[done] {step_id}: {timing['wall_s'] / 60:.1f} min wall, {timing['cpu_s'] / 60:.1f} min CPU", flush=True)

    # ------------------------------------------------------------------ setups
    def setup(self, config: str, scale: float, untrained: bool = False) -> Setup:
        spec = CONFIGS[config]
        iterations = tuple(max(1, round(scale * n)) for n in self.args.base_iterations)
        steps = str(iterations[0]) if len(set(iterations)) == 1 else "-".join(map(str, iterations))
        planned = planning_config(config)
        plans = f"{BASE_PLANS}_{planned}" if CONFIGS[planned].plan_set else BASE_PLANS
        train_args = (*spec.train_args, *common.set_args(self.args.train_set))
        return Setup(f"{'untrained' if untrained else config}_it{steps}", config, plans, iterations, train_args,
                     untrained, scale)

    def rows(self) -> List[Row]:
        """The table rows of the requested parts (floors are not rows of trained models)."""
        a, rows = self.args, []
        if "grid" in a.parts:
            rows += [Row("grid", f"condition {c}, density {d}", self.setup("default", 1), c, d) for c, d in GRID]
        if "untrained" in a.parts:
            rows.append(Row("untrained", "untrained control: random descriptor + condition, masking + flow",
                            self.setup("default", 1, untrained=True), *DEFAULT_VARIANT))
        if "configs" in a.parts:
            rows += [Row("configs", c, self.setup(c, a.config_scale), *DEFAULT_VARIANT) for c in a.configs]
        if "scaling" in a.parts:
            rows += [Row("scaling", f"{s:g}x", self.setup("default", s), *DEFAULT_VARIANT) for s in sorted(a.scales)]
        if "baselines" in a.parts:
            setups = [self.setup("default", s) for s in sorted(a.scales)]
            chosen = [(name, BASELINES[name]) for name in a.baselines]
            rows += [Row("baselines", f"{name} {setup.scale:g}x", setup, *DEFAULT_VARIANT, b.method,
                         self.baseline_variant(setup, b), b.train_args()) for name, b in chosen for setup in setups]
        return rows

    def plans_file(self, setup: Setup) -> Path:
        return self.pre_root(setup.plans) / self.raw_dir.name / f"{setup.plans}.json"

    @staticmethod
    def with_run_arguments(config, setup: Setup, stage: str, extra: Sequence[str]):
        """``config`` with a stage's ``nnScreener_train`` arguments (the setup's, then ``extra``) merged in, as
        ``nnScreener_train`` merges them."""
        from nnscreener.cli.train import build_parser, run_overrides
        from nnscreener.config import merge, validate

        args = build_parser().parse_args(["0", stage, *setup.args_of(stage), *extra])
        return validate(merge(config, run_overrides(args)))

    def resolved_config(self, setup: Setup, stage: str, extra: Sequence[str] = ()):
        """The config a stage of a setup is meant to train with: today's preset + the configuration's planning
        overrides + its training arguments (+ ``extra`` ``nnScreener_train`` arguments)."""
        from nnscreener.config import merge, parse_set_overrides

        config = merge(get_preset(BASE_PRESET),
                       parse_set_overrides(list(CONFIGS[planning_config(setup.config)].plan_set)))
        return self.with_run_arguments(config, setup, stage, extra)

    def actual_config(self, setup: Setup, stage: str, folder: Path, extra: Sequence[str]):
        """The config the stage's model has (its ``config.json``) or, not trained yet, will have: the trainer's
        merge of the plans' stored config with the same arguments (nnscreener/trainers/run.py)."""
        from nnscreener.config import ScreenerConfig
        from nnscreener.plans import config_from_plans

        if (folder / "config.json").is_file():
            return ScreenerConfig.from_dict(json.loads((folder / "config.json").read_text()))
        plans = config_from_plans(json.loads(self.plans_file(setup).read_text()))
        return self.with_run_arguments(plans, setup, stage, extra)

    def check_config(self, setup: Setup, stage: str, folder: Path, extra: Sequence[str]) -> None:
        """Refuses (:class:`SettingsDiffer`) a stage whose model is, or would be, trained with other settings than
        the row means.

        The campaign reuses finished stages, and the trainer reads the plans' stored config; after a preset change
        (the cpu preset's histogram of 2026-12-06) a row named ``default`` would silently measure models of the
        old preset. Compared: seed, preprocessing, network and the stage's own section (+ inference for the stages
        that predict), the sections that shape the stage's model."""
        sections = ["seed", "preprocessing", "network", stages.get_stage(stage).section]
        sections += [] if stage in SSL_STAGES else ["inference"]
        meant = self.resolved_config(setup, stage, extra).to_dict()
        actual = self.actual_config(setup, stage, folder, extra).to_dict()
        differences = [f"{key}: {actual_value!r} (meant {meant_value!r})" for section in sections
                       for key, meant_value, actual_value in flat_differences(section, meant[section], actual[section])]
        if differences:
            where = folder if (folder / "config.json").is_file() else f"the plans {setup.plans} of {self.work_dir}"
            raise SettingsDiffer(f"{setup.name} {stage}: {where} has other settings than today's {BASE_PRESET} "
                                 f"preset with this row's arguments: {'; '.join(differences[:5])}. Use a fresh "
                                 f"--work_dir, or a configuration that sets these fields.")

    def stage_setups(self, setup: Setup) -> Dict[str, Setup]:
        """The setup whose trained model each Screener stage of ``setup`` uses: its own, or another configuration's
        where ``models_of``, ``ssl_of`` or ``condition_of`` share them (followed to the setup that trains them)."""
        spec = CONFIGS[setup.config]
        if spec.models_of:
            return self.stage_setups(self.setup(spec.models_of, setup.scale))

        def owner(of: str, stage: str) -> Setup:
            return self.stage_setups(self.setup(of, setup.scale))[stage] if of else setup

        return {"descriptor": owner(spec.ssl_of, "descriptor"),
                "condition": owner(spec.ssl_of or spec.condition_of, "condition"), "density": setup}

    def same_as_default(self, row: Row) -> bool:
        """Whether a configuration row measures exactly what the ``default`` row of its budget would: masking +
        flow, every stage of its model chain resolving to the default setup's settings and plans, and no extra
        prediction arguments. Such a row (e.g. ``intensity_hist8`` since the cpu preset adopted the histogram)
        stands in for the default model in the scaling and baseline tables at a budget whose default row was not
        run (quality_report.py)."""
        if row.part != "configs" or row.method != stages.DEFAULT_METHOD or \
                (row.condition, row.density) != DEFAULT_VARIANT or CONFIGS[row.setup.config].predict_args:
            return False
        reference = self.setup("default", row.setup.scale)
        density_args = ["--condition", row.condition, "--density", row.density]
        for stage, owner in self.stage_setups(row.setup).items():
            extra = density_args if stage == "density" else []
            if owner.plans != reference.plans or owner.iterations != reference.iterations or \
                    self.resolved_config(owner, stage, extra) != self.resolved_config(reference, stage, extra):
                return False
        return True

    def baseline_variant(self, setup: Setup, baseline: Baseline) -> str:
        """The result-folder variant a baseline row of a setup trains (its trainer's ``variant_for``)."""
        stage = stages.method_stage(baseline.method).name
        return stages.trainer_class(stage).variant_for(self.resolved_config(setup, stage, baseline.train_args()))

    def ssl_variant(self, setup: Setup) -> str:
        """The descriptor/condition variant a setup trains: preset + planning + training overrides."""
        config = self.resolved_config(setup, "descriptor")
        return paths.ssl_variant(config.ssl.objective, config.network.embedding_dim)

    # ------------------------------------------------------------------ steps
    def plan(self, setup: Setup) -> None:
        plans_json = self.plans_file(setup)
        if plans_json.is_file():
            return
        if self.args.reuse_demo and setup.plans == BASE_PLANS:
            raise SystemExit(f"--reuse_demo: the demo has no {plans_json}")
        self.pre_root(setup.plans).mkdir(parents=True, exist_ok=True)
        argv = ["-d", str(self.args.dataset_id), "--preset", BASE_PRESET, "-p", setup.plans,
                "-np", str(self.args.num_processes)]
        plan_set = CONFIGS[setup.config].plan_set
        self.step(f"plan/{setup.plans}", common.cli_argv("nnscreener.cli.plan_and_preprocess", *argv,
                                                         *(["--set", *plan_set] if plan_set else [])),
                  self.env(setup.plans))

    def train(self, setup: Setup, seed: int, stage: str, variant: str, extra: Sequence[str] = ()) -> str:
        """Trains a stage unless finished; resumes an interrupted one. Returns its ledger step id."""
        step_id = f"train/{setup.name}/seed{seed}/{stage}" + (f"/{variant}" if stage not in SSL_STAGES else "")
        folder = self.stage_dir(setup, seed, stage, variant)
        schedule = ["--num_iterations", str(setup.iterations_of(stage)), "--set", f"seed={seed}"]
        self.check_config(setup, stage, folder, [*schedule, *extra])
        final = folder / FINAL_CHECKPOINT
        if final.is_file():
            self.forget_cost_of_another_model(step_id, final)
            return step_id
        resumed = (folder / LATEST_CHECKPOINT).is_file()
        argv = [str(self.args.dataset_id), stage, "-p", setup.plans, "-device", "cpu", *schedule,
                *setup.args_of(stage), *extra]
        self.step(step_id, common.cli_argv("nnscreener.cli.train", *argv, *(["--c"] if resumed else [])),
                  self.env(setup.plans, self.results_root(setup, seed)), iterations=setup.iterations_of(stage),
                  resumed=resumed)
        record = self.ledger.get(step_id)
        if record is not None and final.is_file():  # the model this step's timing belongs to
            self.ledger.record(step_id, **{**record, "model": common.file_fingerprint(final)})
        return step_id

    def forget_cost_of_another_model(self, step_id: str, final: Path) -> None:
        """Drops a finished stage's ledger record when it was measured for another model than the one in its folder
        now (a folder replaced by hand): the tables then show its CPU as not measured instead of another run's.
        Records written before the ledger kept the model's fingerprint (``model``) are trusted as they are."""
        record, model = self.ledger.get(step_id), common.file_fingerprint(final)
        if record is not None and record.get("model", model) != model:
            print(f"[note] {step_id}: {final} is not the model this step's timing was measured for; its CPU "
                  f"minutes are dropped from the ledger", flush=True)
            self.ledger.forget(step_id)

    def ssl(self, setup: Setup, seed: int) -> List[str]:
        """Descriptor and condition of a setup and seed (random ones for the untrained control)."""
        variant, spec = self.ssl_variant(setup), CONFIGS[setup.config]
        if spec.ssl_of:
            return self.shared_ssl(setup, seed, variant, spec.ssl_of, SSL_STAGES)
        if spec.condition_of:
            return [self.train(setup, seed, "descriptor", variant),
                    *self.shared_ssl(setup, seed, variant, spec.condition_of, ("condition",))]
        if not setup.untrained:
            return [self.train(setup, seed, stage, variant) for stage in SSL_STAGES]
        step_id = f"untrained/{setup.name}/seed{seed}"
        if not all((self.stage_dir(setup, seed, s, variant) / FINAL_CHECKPOINT).is_file() for s in SSL_STAGES):
            argv = [sys.executable, str(Path(__file__).resolve().with_name("untrained_models.py")),
                    str(self.args.dataset_id), setup.plans, "--seed", str(seed)]
            self.step(step_id, argv, self.env(setup.plans, self.results_root(setup, seed)))
        return [step_id]

    def shared_ssl(self, setup: Setup, seed: int, variant: str, of: str, shared: Sequence[str]) -> List[str]:
        """The ``shared`` SSL stages of configuration ``of`` (``ssl_of``: both; ``condition_of``: the condition),
        trained if needed, counted in this setup's cost, linked into its own results root. Returns their step ids."""
        base = self.setup(of, setup.scale)
        if base.plans != setup.plans or self.ssl_variant(base) != variant:
            raise SystemExit(f"configuration {setup.config} shares the SSL models of {base.config} but differs "
                             f"in plans or SSL variant")
        step_ids = dict(zip(SSL_STAGES, self.ssl(base, seed)))
        for stage in shared:
            self.link(self.stage_dir(setup, seed, stage, variant), self.stage_dir(base, seed, stage, variant))
        return [step_ids[stage] for stage in shared]

    def screener(self, row: Row, seed: int) -> Dict[str, str]:
        """Descriptor, condition and the row's density model of a seed; returns the ledger step ids of the stages
        the row uses (a row without the learned condition does not count the condition model its setup trains)."""
        setup = row.setup
        cost = dict(zip(("untrained",) if setup.untrained else SSL_STAGES, self.ssl(setup, seed)))
        if not condition_option(row.condition).needs_trained_network:
            cost.pop("condition", None)
        cost["density"] = self.train(setup, seed, "density", row.variant,
                                     ["--condition", row.condition, "--density", row.density])
        return cost

    def shared_models(self, row: Row, seed: int) -> Dict[str, str]:
        """A prediction-only configuration: the three trained models of its ``models_of`` configuration (trained if
        needed, counted in its cost), linked into its own results root."""
        base = dataclasses.replace(row, setup=self.setup(CONFIGS[row.setup.config].models_of, row.setup.scale))
        cost = self.screener(base, seed)
        variants = {**dict.fromkeys(SSL_STAGES, self.ssl_variant(base.setup)), "density": row.variant}
        for stage, variant in variants.items():
            self.link(self.stage_dir(row.setup, seed, stage, variant), self.stage_dir(base.setup, seed, stage, variant))
        return cost

    @staticmethod
    def link(link: Path, target: Path) -> None:
        """Links a result folder of another setup (its checkpoints stay where they were trained)."""
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=True)

    def predict(self, row: Row, seed: int) -> str:
        """Predicts the test images unless done with the current density checkpoint. Returns the step id."""
        step_id = f"predict/{row.setup.name}/seed{seed}/{row.key}"
        fingerprint = common.file_fingerprint(self.stage_dir(row.setup, seed, row.stage, row.variant) /
                                              FINAL_CHECKPOINT)
        if (self.ledger.get(step_id) or {}).get("fingerprint") == fingerprint:
            return step_id
        out = self.prediction_dir(row, seed)
        marker = out / "benchmark_model.json"  # an interrupted prediction of the same model resumes
        stale = marker.is_file() and json.loads(marker.read_text()).get("fingerprint") != fingerprint
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"fingerprint": fingerprint}))
        argv = ["-i", str(self.raw_dir / "imagesTs"), "-o", str(out), "-d", str(self.args.dataset_id),
                "-p", row.setup.plans, "--condition", row.condition, "--density", row.density, "-device", "cpu",
                "-npp", str(self.args.num_processes), "-nps", str(self.args.num_processes)]
        if row.method != stages.DEFAULT_METHOD:  # the flag exists since the baselines; Screener runs without it
            argv += ["--method", row.method, "--variant", row.variant]
        argv += [] if self.args.step_size is None else ["-step_size", str(self.args.step_size)]
        argv += CONFIGS[row.setup.config].predict_args
        self.step(step_id, common.cli_argv("nnscreener.cli.predict", *argv, *(["--overwrite"] if stale else [])),
                  self.env(row.setup.plans, self.results_root(row.setup, seed)), fingerprint=fingerprint)
        return step_id

    def evaluate(self, key: str, pred_dir: Path, fingerprint: str) -> Dict[str, str]:
        """Evaluates a prediction folder under every protocol unless done. Returns ``{protocol: summary file}``."""
        out = {}
        for protocol in self.args.protocols:
            summary, step_id = self.summary_file(protocol, key), f"evaluate/{protocol}/{key}"
            out[protocol] = str(summary.relative_to(self.work_dir))  # the work dir can move (quality_archive.py)
            if summary.is_file() and (self.ledger.get(step_id) or {}).get("fingerprint") == fingerprint:
                continue
            argv = ["-ref", str(self.raw_dir / "labelsTs"), "-pred", str(pred_dir), "-img",
                    str(self.raw_dir / "imagesTs"), "-o", str(summary), "--dataset_json",
                    str(self.raw_dir / "dataset.json"), "--no_per_case"]
            argv += ["--protocol", protocol] if self.protocol_flag else []
            summary.parent.mkdir(parents=True, exist_ok=True)
            self.step(step_id, common.cli_argv("nnscreener.cli.evaluate", *argv), self.env(BASE_PLANS),
                      fingerprint=fingerprint)
        return out

    def run_row(self, row: Row, seed: int) -> Dict[str, object]:
        """Every step of one row and seed; returns the ledger ids of its costs and its summary files."""
        setup = row.setup
        self.plan(setup)
        if row.method != stages.DEFAULT_METHOD:
            cost = {row.stage: self.train(setup, seed, row.stage, row.variant, row.train_args)}
        elif CONFIGS[setup.config].models_of:
            cost = self.shared_models(row, seed)
        else:
            cost = self.screener(row, seed)
        cost["predict"] = self.predict(row, seed)
        fingerprint = self.ledger.get(cost["predict"])["fingerprint"]
        key = f"{setup.name}/seed{seed}/{row.key}"
        return {"cost": cost, "summaries": self.evaluate(key, self.prediction_dir(row, seed), fingerprint)}

    def run_floor(self, kind: str) -> Dict[str, object]:
        step_id, out = f"floor/{kind}", self.work_dir / "predictions" / "floors" / kind
        if self.ledger.get(step_id) is None:
            argv = [kind, "-i", str(self.raw_dir / "imagesTs"), "-o", str(out), "-tr", str(self.raw_dir / "imagesTr")]
            self.step(step_id, common.cli_argv("nnscreener.evaluation.floors", *argv), self.env(BASE_PLANS))
        return {"cost": {"floor": step_id}, "summaries": self.evaluate(f"floors/{kind}", out, f"floor-{kind}")}

    def run(self, save: Callable[[Dict[str, object]], None]) -> None:
        """Runs everything, row by row and seed by seed; a failure skips what depends on it, not the rest.
        ``save`` gets the rows so far after each row (an interrupted campaign still leaves its manifest)."""
        table_rows: List[Dict[str, object]] = []
        for row in self.rows():
            entry = {"part": row.part, "label": row.label, "setup": row.setup.name, "config": row.setup.config,
                     "description": CONFIGS[row.setup.config].description, "plans": row.setup.plans,
                     "iterations": list(row.setup.iterations), "variant": row.variant, "method": row.method,
                     "steps": row.setup.iterations_of(row.stage), "same_as_default": self.same_as_default(row),
                     "preset": preset_fingerprint(), "seeds": {}}
            for seed in self.args.seeds:
                entry["seeds"][str(seed)] = self.attempt(lambda: self.run_row(row, seed), f"{row.label}, seed {seed}")
            table_rows.append(entry)
            save({"rows": table_rows, "failed": self.failed})
        if "floors" in self.args.parts:
            for kind in FLOORS:
                table_rows.append({"part": "floors", "label": f"{kind} floor", "setup": "floors", "seeds": {
                    "0": self.attempt(lambda: self.run_floor(kind), f"{kind} floor")}})
        save({"rows": table_rows, "failed": self.failed})

    def attempt(self, action, what: str) -> Optional[Dict[str, object]]:
        """``action()``, or None when a child failed (recorded by :meth:`step`) or settings differ (recorded here)."""
        try:
            return action()
        except (common.ChildFailed, SettingsDiffer) as e:
            if isinstance(e, SettingsDiffer):
                self.failed[f"settings/{what}"] = str(e)
            print(f"[failed] {what}: {e}", file=sys.stderr, flush=True)
            return None


def planning_config(config: str) -> str:
    """The configuration whose plans (and planning overrides) ``config`` uses: a configuration that shares another's
    models (``ssl_of``, ``condition_of``, ``models_of``) shares its plans."""
    spec = CONFIGS[config]
    return spec.ssl_of or spec.condition_of or spec.models_of or config


def flat_differences(prefix: str, meant, actual) -> List[Tuple[str, object, object]]:
    """``(dotted key, meant, actual)`` for every leaf where two nested ``ScreenerConfig.to_dict()`` dicts differ."""
    if isinstance(meant, dict):
        return [d for key in meant for d in flat_differences(f"{prefix}.{key}", meant[key], actual[key])]
    return [] if meant == actual else [(prefix, meant, actual)]


def evaluate_supports_protocol() -> bool:
    """Whether the installed ``nnScreener_evaluate`` takes ``--protocol``."""
    from nnscreener.cli.evaluate import build_parser

    return any("--protocol" in action.option_strings for action in build_parser()._actions)


# ---------------------------------------------------------------------------------------------------- CLI
def _comma_list(allowed: Sequence[str]):
    def parse(value: str) -> List[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items or any(v not in allowed for v in items):
            raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(allowed)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", type=Path, required=True, help="folder for everything the campaign writes")
    p.add_argument("--reuse_demo", type=Path, help="nnScreener_demo --work_dir to read the dataset and cpu plans from")
    p.add_argument("--parts", type=_comma_list(PARTS), default=list(PARTS), help=f"default {','.join(PARTS)}")
    p.add_argument("--configs", type=_comma_list(tuple(CONFIGS)), default=list(CONFIGS),
                   help=f"configurations of part configs (default {','.join(CONFIGS)})")
    p.add_argument("--baselines", type=_comma_list(tuple(BASELINES)), default=list(BASELINES),
                   help=f"rows of part baselines (default {','.join(BASELINES)})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    p.add_argument("--protocols", nargs="+", default=["all"],
                   help="nnScreener_evaluate --protocol values to evaluate under (default all)")
    p.add_argument("--scales", type=float, nargs="+", default=[1, 4],
                   help="budgets of parts scaling and baselines (default 1 4)")
    p.add_argument("--config_scale", type=float, default=1, help="budget of part configs (default 1)")
    p.add_argument("--base_iterations", type=int, nargs="+", metavar="N",
                   default=[DEMO_ITERATIONS[stage] for stage in paths.STAGES],
                   help=f"steps at 1x: one for all stages or three (default the demo's, {DEMO_ITERATIONS})")
    p.add_argument("--train_set", nargs="+", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra --set overrides of every training stage, e.g. smaller batches for a smoke run (not "
                        "part of the setup folder names: use a fresh --work_dir when changing them)")
    p.add_argument("--step_size", type=float, help="sliding-window step of the predictions (default the preset's)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every child (default 1)")
    p.add_argument("--num_processes", type=int, default=1, help="workers of generation, planning, prediction")
    p.add_argument("--n_proc_da", type=int, help="nnUNet_n_proc_DA of the children (default nnU-Net's)")
    p.add_argument("-d", "--dataset_id", type=int, default=500, help="dataset id (default 500, the demo's)")
    p.add_argument("--n_train", type=int, default=40, help="training scans when generated (default 40)")
    p.add_argument("--n_test", type=int, default=12, help="test scans when generated (default 12)")
    p.add_argument("--data_seed", type=int, default=0, help="seed of the generated dataset (default 0)")
    p.add_argument("--size", choices=SIZES, default="cpu",
                   help="grid of the generated scans (nnScreener_generate_synthetic --size; default cpu, the demo's); "
                        "full: clinical 512 x 512 scans, which planning resamples to the preset's spacing")
    p.add_argument("-o", "--output", type=Path, default=RESULTS,
                   help="markdown file for the tables (default benchmarks/RESULTS.md)")
    p.add_argument("--figures", help="folder of the campaign's figures without models, imported before and exported "
                                     "after the run (quality_archive.py); default: the repository's "
                                     f"{quality_archive.display_name(quality_archive.ARCHIVE)} when -o is the repository's "
                                     "RESULTS.md (its tables then keep every earlier row on a fresh machine), else "
                                     "none; 'none' turns it off")
    return p


def figures_folder(args: argparse.Namespace) -> Optional[Path]:
    """The archive of this invocation's figures: ``--figures``, else the repository's when the tables go into the
    repository's RESULTS.md (a fresh work dir would otherwise replace its tables by this invocation's rows)."""
    if args.figures is None:
        return quality_archive.ARCHIVE if args.output.resolve() == RESULTS.resolve() else None
    return None if args.figures == "none" else Path(args.figures).resolve()


def merged_rows(previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """``campaign.json``'s rows after an invocation: every row of earlier invocations, in their order, then the new
    ones. A row run again (same part, label and setup) takes this invocation's entry; its seeds that this invocation
    did not run keep their earlier figures, the others are replaced (a failure too: it says the row is not measured
    at today's settings)."""
    def key(row: Mapping[str, Any]) -> Tuple[str, str, str]:
        return row["part"], row["label"], row["setup"]

    now = {key(row): row for row in current}
    out = [{**now[key(row)], "seeds": {**row["seeds"], **now.pop(key(row))["seeds"]}} if key(row) in now else dict(row)
           for row in previous]
    return out + [row for row in current if key(row) in now]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if len(args.base_iterations) not in (1, len(paths.STAGES)) or min(args.base_iterations) < 1:
        raise SystemExit("--base_iterations takes 1 or 3 numbers >= 1 (descriptor, condition, density)")
    if min([args.threads, args.num_processes]) < 1 or args.config_scale <= 0 or min(args.scales) <= 0:
        raise SystemExit("--threads, --num_processes must be >= 1; --scales, --config_scale > 0")
    args.base_iterations = tuple(args.base_iterations * (3 if len(args.base_iterations) == 1 else 1))
    start = time.perf_counter()
    data = {"data_seed": args.data_seed, "size": args.size, "dataset_id": args.dataset_id, "n_train": args.n_train,
            "n_test": args.n_test, "base_iterations": list(args.base_iterations)}
    archive = figures_folder(args)  # imported before the campaign reads its ledger
    if archive is not None and quality_archive.import_figures(archive, args.work_dir.resolve(), data, merged_rows):
        print(f"[figures] imported the earlier rows of {archive}", flush=True)
    campaign = Campaign(args)
    manifest = {
        "command": argv, "dataset": str(campaign.raw_dir), **data,
        "plans_json": str(campaign.base_pre_root / campaign.raw_dir.name / f"{BASE_PLANS}.json"),
        "demo_iterations": DEMO_ITERATIONS, "threads": args.threads,
        "num_processes": args.num_processes, "seeds": args.seeds, "protocols": args.protocols,
        "step_size": args.step_size, "reused_demo": str(args.reuse_demo) if args.reuse_demo else None}
    manifest_file = campaign.work_dir / "campaign.json"
    earlier = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    manifest["commands"] = [*quality_archive.commands_of(earlier), argv]
    manifest["figures"] = None if archive is None else quality_archive.display_name(archive)

    def save(figures: Dict[str, object]) -> None:
        common.write_json(manifest_file, {**manifest, **figures, "rows": merged_rows(earlier.get("rows", []),
                                                                                     figures["rows"]),
                                          "dataset_text": quality_report.dataset_description(manifest)})

    campaign.run(save)
    quality_report.main(["--work_dir", str(campaign.work_dir), "-o", str(args.output)])
    if archive is not None:
        written = quality_archive.export_figures(campaign.work_dir, archive)
        print(f"[figures] {len(written)} files of figures (no models) in {archive}", flush=True)
    print(f"wall-clock of this invocation: {(time.perf_counter() - start) / 60:.1f} min; tables in {args.output}")
    if campaign.failed:
        print(f"{len(campaign.failed)} step(s) failed: {', '.join(sorted(campaign.failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

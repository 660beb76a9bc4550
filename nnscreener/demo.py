"""The whole Screener pipeline on the built-in synthetic CT dataset, on a CPU; the library side of
``nnScreener_demo``.

Generates the synthetic dataset, plans and preprocesses it with the ``cpu`` preset, trains the descriptor,
condition and density models with short budgets, predicts anomaly maps for the test set, computes the
intensity-only and random floors, evaluates everything and writes a results table and preview PNGs. Each step runs
the matching console command's ``main(argv)``, so the demo prints exactly what those commands print.

Re-running reuses what is already there: the dataset, the preprocessed data, finished stages (an interrupted
stage is resumed from its last checkpoint) and existing predictions.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from nnscreener.checkpoints import FINAL_CHECKPOINT, LATEST_CHECKPOINT
from nnscreener.errors import ScreenerError

DEMO_DATASET_ID = 500
DEMO_PRESET = "cpu"
DEMO_PLANS = "nnScreenerPlans_cpu"
DEFAULT_MINUTES = 20.0
# Training iterations per stage at the default budget. Measured on 2 CPU cores (benchmarks/RESULTS.md): 180 / 180 /
# 240 took 9.4 min in all on a quiet machine (2026-12-01: descriptor 203 s, condition 156 s, density 82 s, prediction
# 81 s; 17.8 min on 2026-11-29 with the previous code, descriptor 340 s, condition 367 s); the default leaves room
# within DEFAULT_MINUTES for a busier machine.
BASE_ITERATIONS = {"descriptor": 180, "condition": 180, "density": 240}
FIXED_MINUTES = 5.0  # generation, preprocessing, prediction, floors, evaluation: 2-3.3 min quiet, 4 min on busy cores
MODEL_NAME = "Screener (masking + flow)"


@dataclass(frozen=True)
class DemoSettings:
    """What one demo run does; the fields mirror ``nnScreener_demo``'s flags.

    Attributes:
        work_dir: folder for everything the demo writes (and the unset nnUNet_* folders).
        minutes: approximate wall-clock budget on 2 CPU cores; sets the training iterations.
        iterations: training iterations of every stage instead of deriving them from ``minutes``.
        dataset_id: nnU-Net dataset id of the synthetic dataset.
        n_train: synthetic training scans.
        n_test: synthetic test scans.
        seed: seed of the synthetic dataset.
        device: ``cpu`` or ``cuda``, for training and prediction.
        num_processes: worker processes for data steps.
    """

    work_dir: Path
    minutes: float = DEFAULT_MINUTES
    iterations: Optional[int] = None
    dataset_id: int = DEMO_DATASET_ID
    n_train: int = 40
    n_test: int = 12
    seed: int = 0
    device: str = "cpu"
    num_processes: int = 2


def iterations_for_budget(minutes: float) -> Dict[str, int]:
    """Training iterations per stage so that the whole demo takes about ``minutes`` on 2 CPU cores."""
    if minutes <= FIXED_MINUTES:
        raise ScreenerError(f"--minutes must exceed the fixed ~{FIXED_MINUTES:g} minutes of the non-training steps")
    scale = (minutes - FIXED_MINUTES) / (DEFAULT_MINUTES - FIXED_MINUTES)
    return {stage: max(20, int(round(n * scale))) for stage, n in BASE_ITERATIONS.items()}


def stage_iterations(settings: DemoSettings) -> Dict[str, int]:
    """Training iterations per stage: ``settings.iterations`` for every stage, else derived from the budget."""
    if settings.iterations is not None and settings.iterations < 1:
        raise ScreenerError(f"--iterations must be >= 1, got {settings.iterations}")
    if settings.iterations is None:
        return iterations_for_budget(settings.minutes)
    return dict.fromkeys(BASE_ITERATIONS, settings.iterations)


def set_nnunet_folders(work_dir: Path) -> Dict[str, Path]:
    """Points unset nnUNet_* variables at ``work_dir`` subfolders; returns the folders in use."""
    folders = {}
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        if not os.environ.get(var):
            os.environ[var] = str((work_dir / sub).resolve())
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
        folders[var] = Path(os.environ[var])
    return folders


def _step(title: str, fn: Callable[[], object]) -> None:
    """Runs one demo step between a header line and a timing line."""
    print(f"\n=== {title}", flush=True)
    t0 = time.time()
    fn()
    print(f"=== {title}: done in {time.time() - t0:.0f} s", flush=True)


def _run_cli(main: Callable[[Optional[List[str]]], Optional[int]], argv: Sequence[str]) -> None:
    """Runs a console command's ``main(argv)``; a non-zero exit code becomes a ScreenerError."""
    rc = main(list(argv))
    if rc not in (None, 0):
        raise ScreenerError(f"step failed (exit code {rc}): {' '.join(argv)}")


def ensure_raw_dataset(raw_root: Path, settings: DemoSettings) -> Path:
    """The raw dataset ``DatasetXXX_*`` of ``settings.dataset_id`` under ``raw_root``, generated if absent."""
    existing = sorted(raw_root.glob(f"Dataset{settings.dataset_id:03d}_*"))
    if existing:
        print(f"reusing the raw dataset {existing[0]}")
        return existing[0]
    from nnscreener.synthetic.generator import generate_dataset

    generated: List[Path] = []
    _step("generating the synthetic CT dataset", lambda: generated.append(generate_dataset(
        raw_root, dataset_id=settings.dataset_id, n_train=settings.n_train, n_test=settings.n_test, size="cpu",
        seed=settings.seed, num_processes=settings.num_processes)))
    return generated[0]


def ensure_preprocessed(preprocessed_root: Path, raw_dir: Path, settings: DemoSettings) -> None:
    """Plans and preprocesses the dataset with the demo preset unless its plans exist."""
    from nnscreener.cli import plan_and_preprocess as plan_cli

    plans_json = preprocessed_root / raw_dir.name / f"{DEMO_PLANS}.json"
    if plans_json.is_file():
        print(f"reusing the plans and preprocessed data of {plans_json.parent}")
        return
    _step("planning and preprocessing (cpu preset)", lambda: _run_cli(plan_cli.main, [
        "-d", str(settings.dataset_id), "--preset", DEMO_PRESET, "-np", str(settings.num_processes)]))


def train_stage(stage: str, extra: Sequence[str], variant: str, iterations: int, settings: DemoSettings) -> None:
    """Trains one stage; skipped when its final checkpoint exists, resumed when a latest checkpoint does."""
    from nnscreener import paths
    from nnscreener.cli import train as train_cli

    d = str(settings.dataset_id)
    folder = paths.stage_folder(d, stage, variant, DEMO_PLANS)
    if (folder / FINAL_CHECKPOINT).is_file():
        print(f"reusing the finished {stage} model in {folder}")
        return
    argv = [d, stage, "-p", DEMO_PLANS, "-device", settings.device, "--num_iterations", str(iterations), *extra]
    if (folder / LATEST_CHECKPOINT).is_file():
        argv.append("--c")
    _step(f"training the {stage} model ({iterations} iterations)", lambda: _run_cli(train_cli.main, argv))


def train_models(iterations: Dict[str, int], settings: DemoSettings) -> None:
    """Trains the descriptor, condition and density (masking + flow) models in turn."""
    from nnscreener import paths
    from nnscreener.config import get_preset

    preset = get_preset(DEMO_PRESET)  # the variant folder nnScreener_train writes for this preset
    ssl_variant = paths.ssl_variant(preset.ssl.objective, preset.network.embedding_dim)
    train_stage("descriptor", [], ssl_variant, iterations["descriptor"], settings)
    train_stage("condition", [], ssl_variant, iterations["condition"], settings)
    train_stage("density", ["--condition", "masking", "--density", "flow"], paths.density_variant("masking", "flow"),
                iterations["density"], settings)


def predict_test_set(images_ts: Path, model_dir: Path, settings: DemoSettings) -> None:
    """Anomaly maps and preview PNGs of the test images, written to ``model_dir``."""
    from nnscreener.cli import predict as predict_cli

    _step("predicting the test set", lambda: _run_cli(predict_cli.main, [
        "-i", str(images_ts), "-o", str(model_dir), "-d", str(settings.dataset_id), "-p", DEMO_PLANS,
        "--condition", "masking", "--density", "flow", "-device", settings.device, "--save_png"]))


def compute_floors(raw_dir: Path, pred_root: Path) -> Dict[str, Path]:
    """Writes the intensity-only and random floor maps of the test images; returns their folders by method."""
    from nnscreener.evaluation.floors import write_floor_maps

    floor_dirs = {"intensity floor": pred_root / "intensity_floor", "random floor": pred_root / "random_floor"}
    _step("computing the floors", lambda: [
        write_floor_maps(kind, raw_dir / "imagesTs", out, train_images=raw_dir / "imagesTr")
        for kind, out in (("intensity", floor_dirs["intensity floor"]), ("random", floor_dirs["random floor"]))])
    return floor_dirs


def evaluate_methods(raw_dir: Path, pred_dirs: Dict[str, Path]) -> Dict[str, dict]:
    """Evaluates every method's maps against the test labels; returns the summaries by method."""
    from nnscreener.cli import evaluate as evaluate_cli

    summaries = {}
    for name, pred_dir in pred_dirs.items():
        out_json = pred_dir / "summary.json"
        _step(f"evaluating {name}", lambda: _run_cli(evaluate_cli.main, [
            "-ref", str(raw_dir / "labelsTs"), "-pred", str(pred_dir), "-img", str(raw_dir / "imagesTs"),
            "-o", str(out_json), "--dataset_json", str(raw_dir / "dataset.json")]))
        summaries[name] = json.loads(out_json.read_text())
    return summaries


def write_results(work_dir: Path, images_ts: Path, iterations: Dict[str, int], minutes: float,
                  summaries: Dict[str, dict], pred_dirs: Dict[str, Path]) -> Path:
    """Writes ``work_dir/results.md`` and prints the table and where the outputs are; returns the table's path."""
    from nnscreener.evaluation.report import format_results_table

    table = format_results_table(summaries)
    table_path = work_dir / "results.md"
    table_path.write_text(
        f"# nnScreener demo results\n\nSynthetic test set: {images_ts}\nTraining iterations per stage: "
        f"{iterations}\nWall-clock: {minutes:.1f} min\n\n{table}\n")
    model_dir = pred_dirs[MODEL_NAME]
    print("\n" + table)
    print(f"\nanomaly maps:     {model_dir}")
    print(f"preview PNGs:     {model_dir / 'previews'}")
    print(f"results table:    {table_path}")
    print(f"evaluation JSONs: {', '.join(str(p / 'summary.json') for p in pred_dirs.values())}")
    return table_path


def run_demo(settings: DemoSettings) -> Path:
    """Runs (or resumes) the whole demo; returns the path of the results table.

    Raises:
        ScreenerError for a bad budget or iteration count, or a failed step (named with its arguments).
    """
    work_dir = settings.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    folders = set_nnunet_folders(work_dir)
    iterations = stage_iterations(settings)
    t_start = time.time()
    raw_dir = ensure_raw_dataset(folders["nnUNet_raw"], settings)
    ensure_preprocessed(folders["nnUNet_preprocessed"], raw_dir, settings)
    train_models(iterations, settings)
    pred_root = work_dir / "predictions"
    model_dir = pred_root / "screener_masking_flow"
    predict_test_set(raw_dir / "imagesTs", model_dir, settings)
    pred_dirs = {MODEL_NAME: model_dir, **compute_floors(raw_dir, pred_root)}
    summaries = evaluate_methods(raw_dir, pred_dirs)
    return write_results(work_dir, raw_dir / "imagesTs", iterations, (time.time() - t_start) / 60, summaries,
                         pred_dirs)

"""``nnScreener_demo``: the whole Screener pipeline on the built-in synthetic CT dataset, on a CPU.

Generates the synthetic dataset, plans and preprocesses it with the ``cpu`` preset, trains the descriptor,
condition and density models with short budgets, predicts anomaly maps for the test set, computes the
intensity-only and random floors, evaluates everything and writes a results table and preview PNGs.

Re-running reuses what is already there: the dataset, the preprocessed data, finished stages (an interrupted
stage is resumed from its last checkpoint) and existing predictions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from nnscreener.errors import ScreenerError

DEMO_DATASET_ID = 500
DEMO_PRESET = "cpu"
DEMO_PLANS = "nnScreenerPlans_cpu"
DEFAULT_MINUTES = 20.0
# Training iterations per stage at the default budget. Measured on 2 CPU cores (benchmarks/RESULTS.md): 180 / 180 /
# 240 took 17.8 min on a quiet machine (SSL ~1.9-2.0 s, density ~0.65 s per iteration); 200 / 200 / 300 took 23 min
# while a benchmark shared the cores, so the default leaves that much room within DEFAULT_MINUTES.
BASE_ITERATIONS = {"descriptor": 180, "condition": 180, "density": 240}
FIXED_MINUTES = 5.0  # generation, preprocessing, prediction, floors, evaluation: 3.3 min quiet, 4 min on busy cores


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnScreener_demo",
        description="Run the whole nnScreener pipeline on the built-in synthetic CT dataset (CPU, cpu preset): "
                    "generate -> plan/preprocess -> train descriptor, condition, density -> predict -> "
                    "evaluate against the intensity-only and random floors. Re-running reuses finished steps.",
    )
    p.add_argument("--work_dir", type=Path, default=Path("nnscreener_demo"),
                   help="folder for everything the demo writes; nnUNet_raw/_preprocessed/_results default to "
                        "subfolders of it unless those variables are already set (default: ./nnscreener_demo)")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"approximate wall-clock budget on 2 CPU cores (default {DEFAULT_MINUTES:g}); training "
                        f"iterations scale with the time left after the fixed ~{FIXED_MINUTES:g} minutes")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations of every stage, instead of deriving them from --minutes (e.g. 2 for "
                        "a quick smoke test of the pipeline)")
    p.add_argument("-d", "--dataset_id", type=int, default=DEMO_DATASET_ID, help="dataset id (default 500)")
    p.add_argument("--n_train", type=int, default=40, help="synthetic training scans (default 40)")
    p.add_argument("--n_test", type=int, default=12, help="synthetic test scans (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset (default 0)")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"], help="device for training and prediction")
    p.add_argument("-np", "--num_processes", type=int, default=2, help="worker processes for data steps")
    return p


def iterations_for_budget(minutes: float) -> dict:
    """Training iterations per stage so that the whole demo takes about ``minutes`` on 2 CPU cores."""
    if minutes <= FIXED_MINUTES:
        raise ScreenerError(f"--minutes must exceed the fixed ~{FIXED_MINUTES:g} minutes of the non-training steps")
    scale = (minutes - FIXED_MINUTES) / (DEFAULT_MINUTES - FIXED_MINUTES)
    return {stage: max(20, int(round(n * scale))) for stage, n in BASE_ITERATIONS.items()}


def set_nnunet_folders(work_dir: Path) -> dict:
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
    print(f"\n=== {title}", flush=True)
    t0 = time.time()
    fn()
    print(f"=== {title}: done in {time.time() - t0:.0f} s", flush=True)


def _run_cli(main: Callable[[Optional[List[str]]], Optional[int]], argv: Sequence[str]) -> None:
    rc = main(list(argv))
    if rc not in (None, 0):
        raise ScreenerError(f"step failed (exit code {rc}): {' '.join(argv)}")


def run_demo(args: argparse.Namespace) -> Path:
    from nnscreener.synthetic.generator import generate_dataset
    from nnscreener import paths
    from nnscreener.cli import evaluate as evaluate_cli
    from nnscreener.cli import plan_and_preprocess as plan_cli
    from nnscreener.cli import predict as predict_cli
    from nnscreener.cli import train as train_cli
    from nnscreener.config import get_preset
    from nnscreener.evaluation.floors import write_floor_maps
    from nnscreener.evaluation.report import format_results_table

    work_dir: Path = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    folders = set_nnunet_folders(work_dir)
    if args.iterations is not None and args.iterations < 1:
        raise ScreenerError(f"--iterations must be >= 1, got {args.iterations}")
    iterations = (iterations_for_budget(args.minutes) if args.iterations is None
                  else dict.fromkeys(BASE_ITERATIONS, args.iterations))
    d = str(args.dataset_id)
    t_start = time.time()

    existing = sorted(folders["nnUNet_raw"].glob(f"Dataset{args.dataset_id:03d}_*"))
    if existing:
        raw_dir = existing[0]
        print(f"reusing the raw dataset {raw_dir}")
    else:
        def generate() -> None:
            nonlocal raw_dir
            raw_dir = generate_dataset(folders["nnUNet_raw"], dataset_id=args.dataset_id, n_train=args.n_train,
                                       n_test=args.n_test, size="cpu", seed=args.seed,
                                       num_processes=args.num_processes)
        raw_dir = None
        _step("generating the synthetic CT dataset", generate)

    plans_json = folders["nnUNet_preprocessed"] / raw_dir.name / f"{DEMO_PLANS}.json"
    if plans_json.is_file():
        print(f"reusing the plans and preprocessed data of {plans_json.parent}")
    else:
        _step("planning and preprocessing (cpu preset)",
              lambda: _run_cli(plan_cli.main, ["-d", d, "--preset", DEMO_PRESET, "-np", str(args.num_processes)]))

    def train(stage: str, extra: Sequence[str], variant: str) -> None:
        folder = paths.stage_folder(d, stage, variant, DEMO_PLANS)
        if (folder / "checkpoint_final.pth").is_file():
            print(f"reusing the finished {stage} model in {folder}")
            return
        argv = [d, stage, "-p", DEMO_PLANS, "-device", args.device, "--num_iterations", str(iterations[stage]),
                *extra]
        if (folder / "checkpoint_latest.pth").is_file():
            argv.append("--c")
        _step(f"training the {stage} model ({iterations[stage]} iterations)", lambda: _run_cli(train_cli.main, argv))

    preset = get_preset(DEMO_PRESET)  # the variant folder nnScreener_train writes for this preset
    ssl_variant = paths.ssl_variant(preset.ssl.objective, preset.network.embedding_dim)
    train("descriptor", [], ssl_variant)
    train("condition", [], ssl_variant)
    train("density", ["--condition", "masking", "--density", "flow"], paths.density_variant("masking", "flow"))

    images_ts, labels_ts = raw_dir / "imagesTs", raw_dir / "labelsTs"
    pred_root = work_dir / "predictions"
    model_dir = pred_root / "screener_masking_flow"
    _step("predicting the test set", lambda: _run_cli(predict_cli.main, [
        "-i", str(images_ts), "-o", str(model_dir), "-d", d, "-p", DEMO_PLANS, "--condition", "masking",
        "--density", "flow", "-device", args.device, "--save_png"]))

    floor_dirs = {"intensity floor": pred_root / "intensity_floor", "random floor": pred_root / "random_floor"}
    _step("computing the floors", lambda: [
        write_floor_maps(kind, images_ts, out, train_images=raw_dir / "imagesTr")
        for kind, out in (("intensity", floor_dirs["intensity floor"]), ("random", floor_dirs["random floor"]))])

    summaries = {}
    for name, pred_dir in {"Screener (masking + flow)": model_dir, **floor_dirs}.items():
        out_json = pred_dir / "summary.json"
        _step(f"evaluating {name}", lambda: _run_cli(evaluate_cli.main, [
            "-ref", str(labels_ts), "-pred", str(pred_dir), "-img", str(images_ts), "-o", str(out_json),
            "--dataset_json", str(raw_dir / "dataset.json")]))
        summaries[name] = json.loads(out_json.read_text())

    table = format_results_table(summaries)
    table_path = work_dir / "results.md"
    table_path.write_text(
        f"# nnScreener demo results\n\nSynthetic test set: {images_ts}\nTraining iterations per stage: "
        f"{iterations}\nWall-clock: {(time.time() - t_start) / 60:.1f} min\n\n{table}\n")
    print("\n" + table)
    print(f"\nanomaly maps:     {model_dir}")
    print(f"preview PNGs:     {model_dir / 'previews'}")
    print(f"results table:    {table_path}")
    print(f"evaluation JSONs: {', '.join(str(p / 'summary.json') for p in [model_dir, *floor_dirs.values()])}")
    return table_path


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_demo(args)
    except ScreenerError as e:
        print(f"nnScreener_demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

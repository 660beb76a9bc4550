"""Benchmark: nnScreener preprocessing against nnU-Net's own ``DefaultPreprocessor`` on the same CT scans.

The scans are synthetic CTs of clinical size from ``nnscreener.synthetic.generator`` (``--size full``: 512 x 512
in plane, 0.6-1.0 mm, 1-5 mm slices), planned and preprocessed once with ``nnScreener_plan_and_preprocess``'s
function in a throw-away set of nnU-Net folders. Then, each in a fresh process, one case after the other
(image file in, preprocessed arrays out, as a training case with its label):

- **nnScreener**: ``ScreenerPreprocessor.run_case`` with the preset's plans (dense-foreground crop, cubic
  resampling to the preset's spacing, clip/rescale, 3D CLAHE, body mask and its class locations);
- **nnU-Net, same spacing**: ``DefaultPreprocessor.run_case`` with the same plans but nnU-Net's ``CTNormalization``
  (the fingerprint's body statistics) and the body mask as label file: nnU-Net's work for the same target grid;
- **nnU-Net, own plans**: ``DefaultPreprocessor.run_case`` with the plans nnU-Net's ``ExperimentPlanner`` makes for
  the dataset (3d_fullres at the dataset's median spacing, usually finer than Screener's).

Figures: wall seconds per case (timing pass), the peak of numpy / Python allocations while preprocessing one case
("peak MiB", ``tracemalloc``, a second pass; the image reader's own C++ buffer is not counted, it is the same for
all methods) and the process's peak resident size ("RSS MiB", imports included). The target is
nnScreener / nnU-Net (same spacing) <= 1.5 in seconds per case.

    python benchmarks/preprocess.py                      # 3 full-size cases, preset default
    python benchmarks/preprocess.py --size cpu --cases 5 # quick
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List

DATASET_ID = 992


def _set_env(root: Path) -> None:
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(root / sub)


def prepare(root: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """Generates the scans, runs nnScreener planning + preprocessing and nnU-Net's own planner; returns the jobs."""
    from nnscreener.synthetic.generator import generate_dataset
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnscreener.planning.pipeline import plan_and_preprocess
    from nnscreener.config import get_preset
    from nnscreener.plans import load_plans
    from nnscreener.planning.unlabeled import load_derived_dataset

    _set_env(root)
    generate_dataset(Path(os.environ["nnUNet_raw"]), DATASET_ID, name="BenchPreprocess", n_train=args.cases,
                     n_test=0, size=args.size, seed=args.seed, lesion_share=0.0, num_processes=args.np)
    plan_and_preprocess(DATASET_ID, get_preset(args.preset), num_processes=args.np)
    plans = load_plans(DATASET_ID, "nnScreenerPlans" if args.preset == "default" else f"nnScreenerPlans_{args.preset}")
    derived_json, dataset = load_derived_dataset(plans.dataset_name)

    same_spacing = copy.deepcopy(plans.plans)
    conf = same_spacing["configurations"]["3d_fullres"]
    conf.update(preprocessor_name="DefaultPreprocessor", normalization_schemes=["CTNormalization"],
                use_mask_for_norm=[False])

    # nnU-Net's own plans: its planner copies the raw dataset.json over the derived one, which is put back after
    derived_path = plans.preprocessed_dir / "dataset.json"
    saved = derived_path.read_text()
    own = ExperimentPlanner(DATASET_ID, plans_name="nnUNetPlans").plan_experiment()
    derived_path.write_text(saved)

    cases = [{"images": v["images"], "label": v["label"]} for _, v in sorted(dataset.items())]
    return {
        "nnScreener": {"kind": "screener", "plans": plans.plans, "cases": cases},
        "nnU-Net, same spacing": {"kind": "nnunet", "plans": same_spacing, "cases": cases},
        "nnU-Net, own plans": {"kind": "nnunet", "plans": own, "cases": cases},
        "dataset_json": derived_json,
    }


def measure(job: Dict[str, Any], dataset_json: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in a fresh process: preprocesses every case, returns seconds per case and peak memory (MiB)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnscreener.planning.preprocessor import ScreenerPreprocessor

    pm = PlansManager(job["plans"])
    cm = pm.get_configuration("3d_fullres")
    preprocessor = ScreenerPreprocessor(verbose=False) if job["kind"] == "screener" else \
        DefaultPreprocessor(verbose=False)
    seconds, shapes = [], []
    for case in job["cases"]:  # timing pass
        start = time.perf_counter()
        data, _, _ = preprocessor.run_case(case["images"], case["label"], pm, cm, dataset_json)
        seconds.append(time.perf_counter() - start)
        shapes.append(tuple(int(s) for s in data.shape[1:]))
        del data
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    heap_peaks = []
    for case in job["cases"]:  # memory pass: peak of numpy / Python allocations per case
        tracemalloc.start()
        data = preprocessor.run_case(case["images"], case["label"], pm, cm, dataset_json)
        heap_peaks.append(tracemalloc.get_traced_memory()[1] / 2 ** 20)
        tracemalloc.stop()
        del data
    return {"seconds": seconds, "peak_mib": max(heap_peaks), "rss_mib": rss_peak, "shapes": shapes,
            "spacing": list(cm.spacing)}


def _in_fresh_process(job: Dict[str, Any], dataset_json: Dict[str, Any]) -> Dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(measure, (job, dataset_json))


def report(results: Dict[str, Dict[str, Any]]) -> str:
    ref_same, ref_own = results["nnU-Net, same spacing"], results["nnU-Net, own plans"]
    mean = lambda r: sum(r["seconds"]) / len(r["seconds"])  # noqa: E731
    lines = [f"{'method':<24}{'s/case':>9}{'peak MiB':>10}{'RSS MiB':>9}  spacing (z, y, x) mm -> shapes (z, y, x)"]
    for name, r in results.items():
        lines.append(f"{name:<24}{mean(r):>9.2f}{r['peak_mib']:>10.0f}{r['rss_mib']:>9.0f}  "
                     f"{[round(s, 3) for s in r['spacing']]} -> {r['shapes']}")
    scr = results["nnScreener"]
    lines.append(f"ratio nnScreener / nnU-Net same spacing: time {mean(scr) / mean(ref_same):.2f}x, "
                 f"peak memory {scr['peak_mib'] / max(ref_same['peak_mib'], 1):.2f}x (target time <= 1.5x)")
    lines.append(f"ratio nnScreener / nnU-Net own plans:    time {mean(scr) / mean(ref_own):.2f}x, "
                 f"peak memory {scr['peak_mib'] / max(ref_own['peak_mib'], 1):.2f}x")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=3, help="number of synthetic scans")
    p.add_argument("--size", choices=("full", "cpu"), default="full", help="synthetic scan size")
    p.add_argument("--preset", default="default", help="nnScreener preset (default or cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-np", type=int, default=1, help="workers for data generation and planning (not measured)")
    p.add_argument("--keep", action="store_true", help="keep the temporary nnU-Net folders")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="nnscreener_bench_preprocess_"))
    try:
        jobs = prepare(root, args)
        dataset_json = jobs.pop("dataset_json")
        results = {name: _in_fresh_process(job, dataset_json) for name, job in jobs.items()}
        print(f"\n{args.cases} synthetic '{args.size}' scans, preset {args.preset}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        print(report(results))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed benchmark: ``nnScreener_predict`` against nnU-Net's own predictor on a scan of realistic size.

Both run end to end on the same synthetic CT (raw file in, map / segmentation file out) at the same sliding-window
step, with randomly initialised networks of the same plans (timing does not depend on the weights):

- nnScreener: ScreenerPredictor with the preset's descriptor, masked condition network and flow density
  (two UNets and a density model per patch), Screener preprocessing (body crop, resampling, CLAHE) and export of a
  float32 map to the input's geometry;
- nnU-Net: ``nnUNetPredictor`` running one UNet of the same architecture and patch (2 output classes, no mirroring,
  Gaussian blending as it does by default), its own preprocessing (stock ``DefaultPreprocessor`` with
  ``CTNormalization``; nnScreener's plans name Screener's normalization, which nnU-Net cannot look up) and export.

Each side runs in a fresh process; the figures are wall seconds per case of the whole ``predict_from_files`` call
(worker start-up included, amortised over ``--cases`` copies of the scan), the CPU seconds of the process and its
workers (less sensitive than wall time to other jobs on a shared machine), the peak resident memory of the main
process and of the whole process tree (main + workers, sampled from /proc: Linux only), and the peak GPU memory
on CUDA. The target is a ratio of at most 2.5.

    python benchmarks/predict.py --preset cpu                      # 512 x 512 x 300 at 0.8 x 0.8 x 1.25 mm
    python benchmarks/predict.py --preset default --device cuda
    python benchmarks/predict.py --preset cpu --shape_xyz 256 256 150 --spacing_xyz 1.6 1.6 2.5   # faster on CPU

The plans come from planning a one-scan synthetic dataset with the package's generator and planner (a minute or
so before the measurement starts).
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common  # noqa: E402

DATASET_ID = 991
LABELS = {"background": 0, "lesion": 1}


def write_phantom_ct(path: Path, shape_xyz: Sequence[int], spacing_xyz: Sequence[float], seed: int = 0) -> None:
    """A synthetic chest/abdomen CT in HU (int16): air, couch, an elliptic trunk with fat, muscle, two lungs, a spine.

    Written slice by slice so a 512 x 512 x 300 volume needs little more memory than its int16 array.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_xyz
    sx, sy, _ = spacing_xyz
    x = (np.arange(nx) - nx / 2) * sx  # mm from the centre
    y = (np.arange(ny) - ny / 2) * sy
    yy, xx = np.meshgrid(y, x, indexing="ij")  # (y, x)
    trunk = (xx / 170.0) ** 2 + (yy / 115.0) ** 2 <= 1
    muscle = (xx / 150.0) ** 2 + (yy / 97.0) ** 2 <= 1
    lungs = ((np.abs(xx) - 75.0) / 55.0) ** 2 + ((yy + 10.0) / 70.0) ** 2 <= 1
    spine = (xx / 18.0) ** 2 + ((yy - 70.0) / 18.0) ** 2 <= 1
    couch = (yy > 135.0) & (yy < 150.0) & (np.abs(xx) < 200.0)
    volume = np.empty((nz, ny, nx), dtype=np.int16)
    for k in range(nz):
        lung_here = lungs & (k < 0.55 * nz)  # lungs in the upper part of the scan only
        slice_hu = np.full((ny, nx), -1000.0, dtype=np.float32)
        slice_hu[couch] = 200.0
        slice_hu[trunk] = -100.0
        slice_hu[muscle] = 45.0
        slice_hu[lung_here] = -850.0
        slice_hu[spine] = 700.0
        slice_hu += rng.normal(0.0, 15.0, size=slice_hu.shape).astype(np.float32)
        volume[k] = np.clip(slice_hu, -1024, 3000).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin((-0.5 * nx * sx, -0.5 * ny * sy, -600.0))
    sitk.WriteImage(image, str(path), True)


def prepare_plans(preset: str, root: Path) -> str:
    """Plans of ``preset`` for a throw-away one-scan synthetic dataset under ``root`` (the package's generator and
    planner), with this process's nnU-Net folders (inherited by the measuring processes) pointing there; returns
    the plans name."""
    plans = common.tiny_dataset(root / "nnunet", dataset_id=DATASET_ID, preset=preset, n_train=1)
    raw = copy.deepcopy(plans.plans)
    raw["configurations"]["3d_fullres"]["normalization_schemes"] = ["ScreenerCTNormalization"]
    folder = root / "nnunet" / "nnUNet_preprocessed" / plans.dataset_name
    (folder / f"{plans.plans_name}.json").write_text(json.dumps(raw, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dict(plans.dataset_json, labels=LABELS), indent=2))
    return plans.plans_name


def stock_nnunet_plans(plans_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The same plans with nnU-Net's own preprocessing (stock names its predictor can look up)."""
    raw = copy.deepcopy(plans_dict)
    configuration = raw["configurations"]["3d_fullres"]
    configuration["preprocessor_name"] = "DefaultPreprocessor"
    configuration["normalization_schemes"] = ["CTNormalization"]
    configuration["use_mask_for_norm"] = [False]
    raw["foreground_intensity_properties_per_channel"] = {"0": {
        "max": 3000.0, "mean": 40.0, "median": 40.0, "min": -1024.0, "percentile_00_5": -1000.0,
        "percentile_99_5": 1500.0, "std": 200.0}}
    return raw


class TreeMemorySampler:
    """Samples the resident memory (Linux ``/proc``) of this process and of all its descendants (the worker
    processes) every ``interval`` seconds, keeping the peaks: of this process alone and of the tree's sum of RSS
    (shared pages counted once per process, so an upper bound)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_main_mib = 0.0
        self.peak_tree_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss_mib(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:  # the process ended between listing and reading
            pass
        return 0.0

    @staticmethod
    def _descendants(pid: int) -> List[int]:
        found, todo = [], [pid]
        while todo:
            current = todo.pop()
            for children in Path(f"/proc/{current}/task").glob("*/children"):
                try:
                    kids = [int(k) for k in children.read_text().split()]
                except OSError:
                    continue
                found += kids
                todo += kids
        return found

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.is_set():
            main = self._rss_mib(pid)
            tree = main + sum(self._rss_mib(k) for k in self._descendants(pid))
            self.peak_main_mib = max(self.peak_main_mib, main)
            self.peak_tree_mib = max(self.peak_tree_mib, tree)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished (reaped) worker processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_screener(plans, scans: Path, out: Path, args: argparse.Namespace) -> Dict[str, float]:
    import torch

    from nnscreener.inference.predictor import ScreenerPredictor
    from nnscreener.model import build_screener_model
    from nnscreener.networks.dense_net import build_dense_net

    torch.manual_seed(0)
    model = build_screener_model(plans.config, build_dense_net(plans, 1), build_dense_net(plans, 2))
    predictor = ScreenerPredictor(model, plans, args.device, step_size=args.step_size,
                                  num_processes_preprocessing=args.npp, num_processes_export=args.nps,
                                  progress=False)
    start = time.perf_counter()
    summary = predictor.predict_from_files(scans, out, overwrite=True)
    seconds = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"nnScreener failed on {summary.failed}")
    return {"seconds": seconds}


def run_nnunet(plans, scans: Path, out: Path, args: argparse.Namespace) -> Dict[str, float]:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(stock_nnunet_plans(plans.plans))
    configuration = plans_manager.get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                     configuration.network_arch_init_kwargs_req_import, 1, len(LABELS),
                                     allow_init=True, deep_supervision=False)
    predictor = nnUNetPredictor(tile_step_size=args.step_size, use_gaussian=True, use_mirroring=False,
                                device=torch.device(args.device), verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, [network.state_dict()],
                                    plans.dataset_json, "nnUNetTrainer", None)
    files = [[str(p)] for p in sorted(scans.glob("*_0000.nii.gz"))]
    start = time.perf_counter()
    predictor.predict_from_files(files, str(out), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=max(1, args.npp),
                                 num_processes_segmentation_export=max(1, args.nps))
    return {"seconds": time.perf_counter() - start}


def _side(name: str, root: Path, plans_name: str, args: argparse.Namespace, results) -> None:
    """One side in a fresh process: plans, prediction, figures into ``results``."""
    import torch

    from nnscreener.plans import load_plans

    plans = load_plans(DATASET_ID, plans_name)
    run = {"nnscreener": run_screener, "nnunet": run_nnunet}[name]
    cpu_before = _cpu_seconds()
    with TreeMemorySampler() as memory:
        figures = run(plans, root / "scans", root / f"out_{name}", args)
    figures["cpu_seconds"] = _cpu_seconds() - cpu_before
    figures.update(peak_rss_main_mib=memory.peak_main_mib, peak_rss_tree_mib=memory.peak_tree_mib)
    if args.device.startswith("cuda"):
        figures["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    results.put((name, figures))


def measure(name: str, root: Path, plans_name: str, args: argparse.Namespace) -> Dict[str, float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_side, args=(name, root, plans_name, args, results))  # not a daemon: it has workers
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the {name} run failed (exit code {process.exitcode}); see its traceback above")
    return results.get()[1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=("default", "cpu"), help="config preset (plans)")
    parser.add_argument("--shape_xyz", type=int, nargs=3, default=(512, 512, 300), help="scan size, voxels x y z")
    parser.add_argument("--spacing_xyz", type=float, nargs=3, default=(0.8, 0.8, 1.25), help="spacing, mm x y z")
    parser.add_argument("--cases", type=int, default=2, help="copies of the scan to predict (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--step_size", type=float, default=0.5)
    parser.add_argument("-npp", type=int, default=2, help="preprocessing workers, both sides")
    parser.add_argument("-nps", type=int, default=2, help="export workers, both sides")
    parser.add_argument("--work_dir", type=Path, default=None, help="keep the files here (default: a temp folder)")
    args = parser.parse_args(argv)

    root = args.work_dir or Path(tempfile.mkdtemp(prefix="nnscreener_bench_"))
    scans = root / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    write_phantom_ct(scans / "bench_000_0000.nii.gz", args.shape_xyz, args.spacing_xyz)
    for i in range(1, args.cases):
        shutil.copy(scans / "bench_000_0000.nii.gz", scans / f"bench_{i:03d}_0000.nii.gz")
    import torch

    print(f"scan {tuple(args.shape_xyz)} voxels (x, y, z) at {tuple(args.spacing_xyz)} mm, {args.cases} cases, "
          f"preset {args.preset}, device {args.device}, step {args.step_size}, torch threads "
          f"{torch.get_num_threads()}, npp {args.npp}, nps {args.nps}")
    plans_name = prepare_plans(args.preset, root)
    figures = {name: measure(name, root, plans_name, args) for name in ("nnscreener", "nnunet")}
    for name, f in figures.items():
        gpu = f" | peak GPU {f['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in f else ""
        print(f"{name:10s} {f['seconds'] / args.cases:8.1f} s/case wall, {f['cpu_seconds'] / args.cases:8.1f} CPU s/case"
              f" | peak RSS main {f['peak_rss_main_mib']:.0f} MiB,"
              f" with workers {f['peak_rss_tree_mib']:.0f} MiB{gpu}")
    ratio = figures["nnscreener"]["seconds"] / figures["nnunet"]["seconds"]
    cpu_ratio = figures["nnscreener"]["cpu_seconds"] / figures["nnunet"]["cpu_seconds"]
    print(f"ratio nnScreener / nnU-Net: {ratio:.2f}x wall time, {cpu_ratio:.2f}x CPU time (target <= 2.5x)")
    print(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                      "figures": figures, "ratio": ratio,
                      "cpu_ratio": cpu_ratio}))
    if args.work_dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

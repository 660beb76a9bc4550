"""Cost of one dense-SSL descriptor step against nnU-Net's own supervised ``train_step``, and loader throughput.

For each device (CPU, and CUDA when present) it prints seconds per step and voxel pairs per second of
``DescriptorTrainer.train_step`` (B images x 2 views through the plans' UNet + dense head, expander, VICReg,
AdamW), next to ``nnUNetTrainer.train_step`` on the same network, patch and number of UNet passes (batch 2B,
deep-supervised Dice+CE, SGD; torch.compile off for both). It also compares how many cases per second the SSL
loader produces (pair sampling, resizing, colour augmentation) with how many the step consumes.

Usage (from the repository root; without ``-d`` a tiny synthetic dataset is generated and planned in a temp folder):

    python benchmarks/train_step.py [-d 500 -p nnScreenerPlans_cpu] [--devices cpu cuda] [--steps 5]
        [--workers 0 2] [--threads 2] [--set ssl.batch_size=2 ...]

Result folders of the trainers go to a temporary ``nnUNet_results``; nothing is written to yours.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common  # noqa: E402


def open_plans(args: argparse.Namespace, tmp: Path):
    """The dataset's plans, or those of a tiny synthetic dataset (the package's generator and planner) in ``tmp``."""
    from nnscreener.config import parse_set_overrides
    from nnscreener.plans import load_plans

    if args.dataset is None:
        plans = common.tiny_dataset(tmp, dataset_id=991, preset=args.preset, n_train=4)
    else:
        plans = load_plans(args.dataset, args.plans)
    return plans.with_overrides(parse_set_overrides(args.overrides))


def interleaved_seconds_per_call(fns: Dict[str, Callable[[], object]], steps: int, warmup: int,
                                 device: torch.device) -> Dict[str, float]:
    """Median seconds per call of each function, calls interleaved (A B A B ...) so that load changes on a
    shared machine hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def ssl_batch(plans, n: int = 1):
    from nnscreener.data.loaders import make_ssl_loader

    ids = sorted(p.name[: -len(".pkl")] for p in plans.data_dir.glob("*.pkl"))
    loader = make_ssl_loader(plans, ids, masking=False, num_workers=0, seed=0)
    return ids, [next(loader) for _ in range(n)]


def descriptor_step(plans, device: torch.device, batch: Dict) -> Callable[[], object]:
    from nnscreener.trainers.run import resolved_plans_dict
    from nnscreener.trainers.ssl import DescriptorTrainer

    trainer = DescriptorTrainer(resolved_plans_dict(plans, plans.config, False), "3d_fullres", "all",
                                plans.dataset_json, device)
    trainer.initialize()
    trainer.network.train()
    trainer.extra_modules["ssl_head"].train()
    return lambda: trainer.train_step(batch)


def nnunet_step(plans, device: torch.device, batch_size: int) -> Callable[[], object]:
    """nnUNetTrainer.train_step on random images and labels at the plans' patch (deep supervision on)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    os.environ["nnUNet_compile"] = "f"
    plans_dict = copy.deepcopy(plans.plans)
    plans_dict["continue_training"] = False
    trainer = nnUNetTrainer(plans_dict, "3d_fullres", "all", plans.dataset_json, device)
    trainer.initialize()
    trainer.network.train()
    patch = tuple(plans.config.network.patch_size_zyx)
    data = torch.rand(batch_size, 1, *patch)
    seg = (torch.rand(batch_size, 1, *patch) > 0.5).float()
    targets = [F.interpolate(seg, size=[round(p * s) for p, s in zip(patch, scale)], mode="nearest")
               for scale in trainer._get_deep_supervision_scales()]
    batch = {"data": data, "target": targets}
    return lambda: trainer.train_step(batch)


def loader_cases_per_second(plans, ids: List[str], workers: int, n_batches: int) -> float:
    from nnscreener.data.loaders import make_ssl_loader

    """Cases per second from the loader's construction over ``n_batches`` (start-up included: conservative,
    and it keeps batches that workers cached ahead from being counted as free)."""
    start = time.perf_counter()
    loader = make_ssl_loader(plans, ids, masking=False, num_workers=workers, seed=1)
    for _ in range(n_batches):
        next(loader)
    elapsed = time.perf_counter() - start
    if hasattr(loader, "_finish"):
        loader._finish()
    return n_batches * plans.config.ssl.batch_size / elapsed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset",
                   help="preprocessed dataset id (default: a tiny synthetic dataset in a temp folder)")
    p.add_argument("-p", dest="plans", default="nnScreenerPlans_cpu")
    p.add_argument("--preset", default="cpu", help="preset of the tiny dataset (default cpu)")
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to measure")
    p.add_argument("--loader_batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--set", dest="overrides", action="append", help="config override section.field=value")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "nnUNet_results").mkdir()
        os.environ["nnUNet_results"] = str(tmp / "nnUNet_results")
        os.environ.setdefault("nnUNet_n_proc_DA", "0")
        plans = open_plans(args, tmp)
        cfg = plans.config
        b, n = cfg.ssl.batch_size, cfg.ssl.n_pairs_per_image
        features = plans.configuration_manager.network_arch_init_kwargs["features_per_stage"]
        print(f"# dataset {plans.dataset_name}, plans {plans.plans_name}, patch (x, y, z) "
              f"{cfg.network.patch_size_xyz}, features {features}, "
              f"SSL batch {b} images x 2 views x {n} pairs, expander {cfg.ssl.vicreg_expander_dims}, "
              f"torch threads {args.threads}\n")
        ids, (batch,) = ssl_batch(plans)
        print("| device | descriptor step (s, median) | voxel pairs / s | nnU-Net train_step, batch 2B (s) | ratio |")
        print("|---|---|---|---|---|")
        step_seconds = {}
        for name in args.devices:
            device = torch.device(name)
            seconds = interleaved_seconds_per_call(
                {"ssl": descriptor_step(plans, device, batch), "nnunet": nnunet_step(plans, device, 2 * b)},
                args.steps, args.warmup, device)
            ssl_s, nnunet_s = seconds["ssl"], seconds["nnunet"]
            step_seconds[name] = ssl_s
            print(f"| {name} | {ssl_s:.3f} | {b * n / ssl_s:,.0f} | {nnunet_s:.3f} | {ssl_s / nnunet_s:.2f} |")

        print("\n| loader workers | loader cases / s | " + " | ".join(f"{d} step cases / s" for d in step_seconds)
              + " |")
        print("|---|---|" + "---|" * len(step_seconds))
        for workers in args.workers:
            rate = loader_cases_per_second(plans, ids, workers, args.loader_batches)
            print(f"| {workers} | {rate:.2f} | " + " | ".join(f"{b / s:.2f}" for s in step_seconds.values()) + " |")


if __name__ == "__main__":
    main()

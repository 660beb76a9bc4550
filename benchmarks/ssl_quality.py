"""Evidence that dense SSL learns: voxel retrieval between augmented views, and masking sensitivity.

1. **Retrieval.** Two augmented views of a case (the training sampler: different crops, scales and colour
   augmentations; shared flips / rot90) and ``n`` paired voxels. For every voxel of view 1, the candidate of
   view 2 with the highest cosine similarity of dense features is retrieved; top-1 accuracy = share whose
   retrieved candidate is the true partner (chance = 1/n). Trained descriptor vs an untrained one (same
   architecture, random init) vs chance; the trained condition model (mask = ones) for reference.
2. **Masking sensitivity.** A block (``ssl.masking.block_fraction`` of each patch side, centred) is zeroed in a
   view. The change of each model's features, ``||f(masked) - f(full)||`` per voxel, is divided by the mean
   distance between the features of random voxel pairs of the full view (1.0 = as different as two random
   voxels), inside and outside the block. The descriptor gets ``image * mask``; the condition model gets
   ``(image * mask, mask)``, as in training. Its features must change much less than the descriptor's.

Usage (from the repository root):

    python benchmarks/ssl_quality.py [-d 500 -p nnScreenerPlans_cpu] [--num_iterations 100] [--threads 2]
        [--descriptor_folder F --condition_folder F] [--set ssl.batch_size=2 ...]

Without ``-d`` a small fake dataset is written to a temp folder. Without ``--*_folder`` both models are first
trained with ``nnScreener_train`` (``--num_iterations`` steps, cpu device) into a temporary nnUNet_results.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from nnscreener import paths

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_step import open_plans  # noqa: E402  (benchmarks/ is not a package)


def train_stage(plans, stage: str, args: argparse.Namespace) -> Path:
    from nnscreener.cli.train import main as train_main

    argv = [plans.dataset_name, stage, "-p", plans.plans_name, "-device", "cpu", "--num_iterations",
            str(args.num_iterations), "--overwrite"]
    for item in args.overrides or []:
        argv += ["--set", item]
    start = time.perf_counter()
    if train_main(argv) != 0:
        raise SystemExit(f"training {stage} failed")
    print(f"# trained {stage} for {args.num_iterations} iterations in {time.perf_counter() - start:.0f} s",
          flush=True)
    return paths.stage_folder(plans.dataset_name, stage, paths.ssl_variant(plans.config.ssl.objective,
                                                                           plans.config.network.embedding_dim),
                              plans.plans_name)


@torch.no_grad()
def dense(net, view: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(1, d, Z, Y, X) features of a (1, 1, Z, Y, X) view; condition nets get (view*mask, mask)."""
    mask = torch.ones_like(view) if mask is None else mask
    x = view * mask if net.in_channels == 1 else torch.cat([view * mask, mask], dim=1)
    return net(x)


@torch.no_grad()
def retrieval_top1(nets: Dict[str, torch.nn.Module], batches: List[Dict]) -> Dict[str, float]:
    """Top-1 accuracy of finding each view-1 voxel's partner among the view-2 candidates (cosine)."""
    from nnscreener.networks.dense_net import features_at

    hits = {k: [] for k in nets}
    for batch in batches:
        for b in range(batch["view1"].shape[0]):
            idx1, idx2 = batch["idx1"][b:b + 1], batch["idx2"][b:b + 1]
            # a candidate at the partner's voxel is correct even if that voxel was drawn twice
            same_voxel = (idx2[0][:, None, :] == idx2[0][None, :, :]).all(-1)  # (n, n)
            for name, net in nets.items():
                e1 = F.normalize(features_at(dense(net, batch["view1"][b:b + 1]), idx1)[0], dim=1)
                e2 = F.normalize(features_at(dense(net, batch["view2"][b:b + 1]), idx2)[0], dim=1)
                best = (e1 @ e2.T).argmax(dim=1)
                hits[name].append(same_voxel[torch.arange(len(best)), best].float().mean().item())
    return {k: float(np.mean(v)) for k, v in hits.items()}


def centred_block_mask(patch_zyx, fraction: float) -> torch.Tensor:
    """(1, 1, Z, Y, X) ones with a centred block of ``fraction`` of each side set to 0."""
    mask = torch.ones(1, 1, *patch_zyx)
    sl = [slice(s // 2 - max(1, round(s * fraction)) // 2, s // 2 - max(1, round(s * fraction)) // 2
                + max(1, round(s * fraction))) for s in patch_zyx]
    mask[(0, 0, *sl)] = 0
    return mask


@torch.no_grad()
def masking_sensitivity(nets: Dict[str, torch.nn.Module], views: List[torch.Tensor], fraction: float,
                        n_random_pairs: int = 4096) -> Dict[str, Dict[str, float]]:
    """Feature change from masking a centred block, in units of the mean random-voxel-pair feature distance."""
    gen = torch.Generator().manual_seed(0)
    out = {k: {"inside": [], "outside": []} for k in nets}
    for view in views:
        mask = centred_block_mask(view.shape[2:], fraction)
        inside = mask[0, 0] == 0
        for name, net in nets.items():
            full = dense(net, view)[0].flatten(1).T  # (V, d)
            masked = dense(net, view, mask)[0].flatten(1).T
            u, w = torch.randint(0, full.shape[0], (2, n_random_pairs), generator=gen)
            scale = (full[u] - full[w]).norm(dim=1).mean()
            change = (masked - full).norm(dim=1) / scale
            out[name]["inside"].append(change[inside.flatten()].mean().item())
            out[name]["outside"].append(change[~inside.flatten()].mean().item())
    return {k: {where: float(np.mean(v)) for where, v in d.items()} for k, d in out.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", help="preprocessed dataset id (default: a temporary fake dataset)")
    p.add_argument("-p", dest="plans", default="nnScreenerPlans_cpu")
    p.add_argument("--preset", default="cpu", help="preset of the fake dataset (default cpu)")
    p.add_argument("--num_iterations", type=int, default=100, help="training steps per model (when training)")
    p.add_argument("--descriptor_folder", type=Path, help="a trained descriptor folder (skips its training)")
    p.add_argument("--condition_folder", type=Path, help="a trained condition folder (skips its training)")
    p.add_argument("--eval_batches", type=int, default=4, help="batches of view pairs for the evaluation")
    p.add_argument("--candidates", type=int, default=512, help="paired voxels (= retrieval candidates) per image")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--set", dest="overrides", action="append", help="config override section.field=value")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from nnscreener.data.loaders import make_ssl_loader
    from nnscreener.networks.dense_net import build_dense_net, load_dense_net

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.descriptor_folder is None or args.condition_folder is None:
            (tmp / "nnUNet_results").mkdir()
            os.environ["nnUNet_results"] = str(tmp / "nnUNet_results")
        os.environ.setdefault("nnUNet_n_proc_DA", "0")
        plans = open_plans(args, tmp)
        descriptor_folder = args.descriptor_folder or train_stage(plans, "descriptor", args)
        condition_folder = args.condition_folder or train_stage(plans, "condition", args)
        descriptor, config = load_dense_net(descriptor_folder, "cpu")
        condition, _ = load_dense_net(condition_folder, "cpu")
        torch.manual_seed(0)
        untrained = build_dense_net(plans, 1, descriptor.embedding_dim).eval()

        eval_plans = plans.with_overrides({"ssl": {"n_pairs_per_image": args.candidates}})
        ids = sorted(f.name[: -len(".pkl")] for f in plans.data_dir.glob("*.pkl"))
        loader = make_ssl_loader(eval_plans, ids, masking=False, num_workers=0, seed=2024)
        batches = [next(loader) for _ in range(args.eval_batches)]
        n_images = sum(b["view1"].shape[0] for b in batches)

        top1 = retrieval_top1({"trained descriptor": descriptor, "untrained descriptor": untrained,
                               "trained condition (mask = 1)": condition}, batches)
        print(f"\n## Voxel retrieval between two augmented views ({n_images} images, {args.candidates} candidates "
              f"each; chance {1 / args.candidates:.4f})\n")
        print("| features | top-1 accuracy |\n|---|---|")
        for name, acc in top1.items():
            print(f"| {name} | {acc:.3f} |")
        print(f"| chance | {1 / args.candidates:.4f} |")

        views = [b["view1"][i:i + 1] for b in batches for i in range(b["view1"].shape[0])]
        fraction = config.ssl.masking.block_fraction
        sens = masking_sensitivity({"trained descriptor": descriptor, "trained condition": condition}, views,
                                   fraction)
        print(f"\n## Feature change when a centred block ({fraction:.2f} of each side) is masked "
              f"({len(views)} views; units: mean distance between random voxels' features)\n")
        print("| model | inside the block | outside the block |\n|---|---|---|")
        for name, d in sens.items():
            print(f"| {name} | {d['inside']:.3f} | {d['outside']:.3f} |")


if __name__ == "__main__":
    main()

"""Evidence that dense SSL learns: voxel retrieval between augmented views, and how much masking moves features.

1. **Retrieval.** Two augmented views of a case (the training sampler: different crops, scales and colour
   augmentations; shared flips / rot90) and ``n`` paired voxels. For every voxel of view 1, the candidate of view
   2 with the highest cosine similarity of dense features is retrieved; top-1 accuracy = share whose retrieved
   candidate is the true partner (chance = 1/n). Trained descriptor vs an untrained one (same architecture,
   random init) vs chance; the trained condition model (mask = ones) for reference.
2. **Masking probe.** Masks drawn by the trainer's own sampler (:func:`nnscreener.data.masking.random_block_mask`
   with the config's ``ssl.masking`` block fraction and ratio; the probability of masking a view at all is set to
   1, as an unmasked draw shows nothing). For each view and draw, ``||f(masked input) - f(unmasked input)||`` per
   voxel, divided by the mean distance between the unmasked features of random voxel pairs (1.0 = as different
   as two random voxels), averaged over the masked voxels and over the visible ones. The condition model gets
   ``(image * mask, mask)`` (unmasked: ``(image, 1)``), the descriptor ``image * mask``. A condition model that
   learned what training asks of it changes much less than the descriptor, above all at visible voxels.
3. **Crop consistency.** What makes the sliding window's overlapping patches disagree (seams in the map): each
   view is cut into two crops along x, the first and the last ``crop_share`` of it (rounded to the network's total
   stride), and the features of the voxels in their overlap are compared, ``||f(crop A)[v] - f(crop B)[v]||`` in
   the same unit. A per-voxel feature depends on the crop only through the receptive field that the crop's edge
   cuts; normalisation over the crop (InstanceNorm) adds a shift that depends on everything in the crop.

Usage (from the repository root):

    python benchmarks/ssl_quality.py --descriptor_folder R/Dataset500_X/descriptor__vicreg_d32__nnScreenerPlans_cpu \\
        --condition_folder R/Dataset500_X/condition__vicreg_d32__nnScreenerPlans_cpu [-o probe.json]
    python benchmarks/ssl_quality.py [--num_iterations 100]     # trains both first, on a tiny synthetic dataset

With the folders, the dataset and plans come from their names (``$nnUNet_preprocessed`` must hold them) unless
``-d`` / ``-p`` are given. Without them, both models are trained with ``nnScreener_train`` (``--num_iterations``
steps, cpu) in a temporary folder, on the given dataset or a tiny synthetic one.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common  # noqa: E402
from nnscreener import paths  # noqa: E402


# ---------------------------------------------------------------------------------------------------- arithmetic
def random_pair_distance(features: torch.Tensor, n_pairs: int, generator: torch.Generator) -> float:
    """Mean distance between the features (V, d) of ``n_pairs`` random voxel pairs."""
    u, w = torch.randint(0, features.shape[0], (2, n_pairs), generator=generator)
    return float((features[u] - features[w]).norm(dim=1).mean())


def relative_change(full: torch.Tensor, masked: torch.Tensor, hidden: torch.Tensor,
                    scale: float) -> Dict[str, float]:
    """Mean ``||masked - full|| / scale`` per voxel over the hidden voxels and over the visible ones.

    Args:
        full, masked: (V, d) features of the unmasked and masked input.
        hidden: (V,) bool, True where the mask hid the voxel.
        scale: the unit, e.g. :func:`random_pair_distance` of ``full``.
    """
    change = (masked - full).norm(dim=1) / scale
    nan = float("nan")
    return {"masked": float(change[hidden].mean()) if hidden.any() else nan,
            "visible": float(change[~hidden].mean()) if (~hidden).any() else nan}


@torch.no_grad()
def features(net: torch.nn.Module, view: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(V, d) features of a (1, 1, Z, Y, X) view under a (Z, Y, X) mask; 2-channel nets get (view*mask, mask)."""
    mask = mask[None, None]
    x = view * mask if net.in_channels == 1 else torch.cat([view * mask, mask], dim=1)
    return net(x)[0].flatten(1).T


@torch.no_grad()
def masking_probe(nets: Mapping[str, torch.nn.Module], views: Sequence[torch.Tensor], masking, draws: int,
                  seed: int = 0, n_random_pairs: int = 4096) -> Dict[str, Dict[str, float]]:
    """Feature change from training-like masks, per model: ``{"masked", "visible"}`` (see the module docstring),
    averaged over ``views`` x ``draws`` masks from a generator seeded with ``seed``."""
    from nnscreener.data.masking import random_block_mask

    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    out: Dict[str, Dict[str, List[float]]] = {k: {"masked": [], "visible": []} for k in nets}
    for view in views:
        ones = torch.ones(view.shape[2:])
        full = {k: features(net, view, ones) for k, net in nets.items()}
        scale = {k: random_pair_distance(f, n_random_pairs, gen) for k, f in full.items()}
        for _ in range(draws):
            mask = random_block_mask(view.shape[2:], masking.block_fraction, masking.ratio, 1.0, rng)
            hidden = (mask == 0).flatten()
            for name, net in nets.items():
                for where, value in relative_change(full[name], features(net, view, mask), hidden,
                                                    scale[name]).items():
                    out[name][where].append(value)
    return {k: {where: float(np.nanmean(v)) for where, v in d.items()} for k, d in out.items()}


def overlapping_crops(width: int, stride: int, crop_share: float = 2 / 3) -> Tuple[slice, slice, slice, slice]:
    """Two crops of ``[0, width)`` along one axis, ``[0, w)`` and ``[width - w, width)`` with ``w`` the multiple of
    ``stride`` nearest ``crop_share * width``; returns (crop A, crop B, overlap within A, overlap within B)."""
    w = max(stride, int(round(crop_share * width / stride)) * stride)
    if w >= width:
        raise ValueError(f"a crop of {w} voxels does not leave an offset inside {width} (stride {stride})")
    start_b = width - w
    return slice(0, w), slice(start_b, width), slice(start_b, w), slice(0, w - start_b)


@torch.no_grad()
def crop_consistency(nets: Mapping[str, torch.nn.Module], views: Sequence[torch.Tensor], stride: int,
                     seed: int = 0, n_random_pairs: int = 4096) -> Dict[str, float]:
    """Mean change of a voxel's features between two overlapping crops of the same view (see the module docstring),
    in units of the random-pair distance of the whole view's features; views are (1, 1, Z, Y, X)."""
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, List[float]] = {k: [] for k in nets}
    for view in views:
        a, b, in_a, in_b = overlapping_crops(view.shape[-1], stride)
        for name, net in nets.items():
            scale = random_pair_distance(net(_input(net, view))[0].flatten(1).T, n_random_pairs, gen)
            fa = net(_input(net, view[..., a]))[0][..., in_a]
            fb = net(_input(net, view[..., b]))[0][..., in_b]
            out[name].append(float((fa - fb).norm(dim=0).mean()) / scale)
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def retrieval_top1(nets: Mapping[str, torch.nn.Module], batches: Sequence[Mapping]) -> Dict[str, float]:
    """Top-1 accuracy of finding each view-1 voxel's partner among the view-2 candidates (cosine)."""
    from nnscreener.networks.dense_net import features_at

    hits: Dict[str, List[float]] = {k: [] for k in nets}
    for batch in batches:
        for b in range(batch["view1"].shape[0]):
            idx1, idx2 = batch["idx1"][b:b + 1], batch["idx2"][b:b + 1]
            same_voxel = (idx2[0][:, None, :] == idx2[0][None, :, :]).all(-1)  # a voxel drawn twice counts
            for name, net in nets.items():
                views = [batch[v][b:b + 1] for v in ("view1", "view2")]
                e1, e2 = (F.normalize(features_at(net(_input(net, v)), i)[0], dim=1)
                          for v, i in zip(views, (idx1, idx2)))
                best = (e1 @ e2.T).argmax(dim=1)
                hits[name].append(same_voxel[torch.arange(len(best)), best].float().mean().item())
    return {k: float(np.mean(v)) for k, v in hits.items()}


def _input(net: torch.nn.Module, view: torch.Tensor) -> torch.Tensor:
    return view if net.in_channels == 1 else torch.cat([view, torch.ones_like(view)], dim=1)


# ---------------------------------------------------------------------------------------------------- models
def train_stage(plans, stage: str, args: argparse.Namespace) -> Path:
    """Trains a stage with ``nnScreener_train`` in this process; returns its folder."""
    from nnscreener.cli.train import main as train_main

    argv = [plans.dataset_name, stage, "-p", plans.plans_name, "-device", "cpu", "--num_iterations",
            str(args.num_iterations), "--overwrite", *common.set_args(args.overrides or [])]
    if train_main(argv) != 0:
        raise SystemExit(f"training {stage} failed")
    variant = paths.ssl_variant(plans.config.ssl.objective, plans.config.network.embedding_dim)
    return paths.stage_folder(plans.dataset_name, stage, variant, plans.plans_name)


def open_plans(args: argparse.Namespace, tmp: Path):
    """The plans of ``-d``/``-p``, of the given folders' names, or of a tiny synthetic dataset in ``tmp``."""
    from nnscreener.config import parse_set_overrides
    from nnscreener.plans import load_plans

    folder = args.descriptor_folder or args.condition_folder
    if folder is not None:  # R/DatasetXXX/<stage>__<variant>__<plans>: R is an nnUNet_results root
        os.environ.setdefault("nnUNet_results", str(folder.resolve().parent.parent))
    if args.dataset is not None or folder is not None:
        dataset = args.dataset or folder.resolve().parent.name
        plans_name = args.plans or (folder.name.split("__")[2] if folder is not None else "nnScreenerPlans_cpu")
        plans = load_plans(dataset, plans_name)
    else:
        plans = common.tiny_dataset(tmp, dataset_id=991, preset=args.preset, n_train=args.n_cases)
    return plans.with_overrides(parse_set_overrides(args.overrides))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", help="preprocessed dataset id (default: the folders', else a tiny one)")
    p.add_argument("-p", dest="plans", help="plans name (default: the folders', else nnScreenerPlans_cpu)")
    p.add_argument("--preset", default="cpu", help="preset of the tiny dataset (default cpu)")
    p.add_argument("--n_cases", type=int, default=3, help="training scans of the tiny dataset (default 3)")
    p.add_argument("--num_iterations", type=int, default=100, help="training steps per model (when training)")
    p.add_argument("--descriptor_folder", type=Path, help="a trained descriptor folder (skips its training)")
    p.add_argument("--condition_folder", type=Path, help="a trained condition folder (skips its training)")
    p.add_argument("--eval_batches", type=int, default=4, help="loader batches of view pairs to evaluate on")
    p.add_argument("--candidates", type=int, default=512, help="paired voxels (= retrieval candidates) per image")
    p.add_argument("--draws", type=int, default=4, help="mask draws per view of the masking probe (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the views and mask draws (default 0)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--set", dest="overrides", action="append", help="config override section.field=value")
    p.add_argument("-o", "--output", type=Path, help="JSON file for the figures")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from nnscreener.data.loaders import make_ssl_loader
    from nnscreener.networks.dense_net import build_dense_net, load_dense_net

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("nnUNet_n_proc_DA", "0")
        plans = open_plans(args, tmp)
        if args.descriptor_folder is None or args.condition_folder is None:
            os.environ["nnUNet_results"] = str(tmp / "nnUNet_results")
        descriptor, config = load_dense_net(args.descriptor_folder or train_stage(plans, "descriptor", args))
        condition, _ = load_dense_net(args.condition_folder or train_stage(plans, "condition", args))
        torch.manual_seed(args.seed)
        untrained = build_dense_net(plans, 1, descriptor.embedding_dim).eval()

        eval_plans = plans.with_overrides({"ssl": {"n_pairs_per_image": args.candidates}})
        ids = sorted(f.name[: -len(".pkl")] for f in plans.data_dir.glob("*.pkl"))
        loader = make_ssl_loader(eval_plans, ids, masking=False, num_workers=0, seed=args.seed)
        batches = [next(loader) for _ in range(args.eval_batches)]
        views = [b["view1"][i:i + 1] for b in batches for i in range(b["view1"].shape[0])]
        top1 = retrieval_top1({"trained descriptor": descriptor, "untrained descriptor": untrained,
                               "trained condition (mask = 1)": condition}, batches)
        probe = masking_probe({"descriptor": descriptor, "condition": condition}, views, config.ssl.masking,
                              args.draws, args.seed)
        stride = int(np.prod([s[-1] for s in plans.configuration_manager.network_arch_init_kwargs["strides"]]))
        consistency = crop_consistency({"trained descriptor": descriptor, "untrained descriptor": untrained,
                                        "trained condition (mask = 1)": condition}, views, stride, args.seed)

    m = config.ssl.masking
    print(f"\n## Voxel retrieval ({len(views)} images, {args.candidates} candidates; chance {1 / args.candidates:.4f})"
          "\n\n| features | top-1 |\n|---|---:|\n" + "\n".join(f"| {k} | {v:.3f} |" for k, v in top1.items()))
    print(f"\n## Masking probe ({len(views)} views x {args.draws} masks: {m.ratio:g} of the blocks, block "
          f"{m.block_fraction:g} of each side; unit: mean random-pair feature distance)\n\n"
          "| model | masked voxels | visible voxels |\n|---|---:|---:|\n" +
          "\n".join(f"| {k} | {v['masked']:.3f} | {v['visible']:.3f} |" for k, v in probe.items()))
    print("\n## Crop consistency (two crops of each view along x, overlapping; unit: mean random-pair feature "
          "distance)\n\n| features | change in the overlap |\n|---|---:|\n" +
          "\n".join(f"| {k} | {v:.3f} |" for k, v in consistency.items()))
    if args.output is not None:
        common.write_json(args.output, {"retrieval_top1": top1, "chance": 1 / args.candidates, "masking": probe,
                                        "crop_consistency": consistency,
                                        "views": len(views), "draws": args.draws, "seed": args.seed,
                                        "masking_config": {"ratio": m.ratio, "block_fraction": m.block_fraction},
                                        "descriptor_folder": str(args.descriptor_folder or ""),
                                        "condition_folder": str(args.condition_folder or "")})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The untrained control's models: randomly initialised descriptor and condition networks written as finished
stages of ``$nnUNet_results``, so that ``nnScreener_train ... density`` and ``nnScreener_predict`` use them exactly
as trained ones. ``quality.py`` runs it as a child, one ``nnUNet_results`` root per seed.

``nnScreener_train`` cannot train 0 steps (``num_iterations`` must be >= 1), hence this minimal writer: it saves
the keys :func:`~nnscreener.networks.dense_net.load_dense_net` reads with :mod:`nnscreener.checkpoints`, beside the
stage's ``plans.json`` / ``dataset.json`` / ``config.json``; the networks come from the trainers' builder.

    nnUNet_results=R python benchmarks/untrained_models.py 500 nnScreenerPlans_cpu --seed 0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from nnscreener import paths, stages
from nnscreener.checkpoints import FINAL_CHECKPOINT, save_checkpoint


def write_untrained_models(dataset: str, plans_name: str, seed: int) -> List[Path]:
    """Writes the two random networks (torch seed ``seed``, also the config's ``seed``); returns their folders."""
    import torch

    from nnscreener.config import merge
    from nnscreener.networks.dense_net import build_dense_net
    from nnscreener.plans import load_plans

    plans = load_plans(dataset, plans_name)
    config = merge(plans.config, {"seed": seed})
    variant = paths.ssl_variant(config.ssl.objective, config.network.embedding_dim)
    torch.manual_seed(seed)
    folders = []
    for stage in ("descriptor", "condition"):
        in_channels = stages.input_channels(stage)
        masked_input = stages.masked_input(stage)  # as the trainer builds it: mask token, condition configuration
        folder = paths.stage_folder(plans.dataset_name, stage, variant, plans.plans_name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plans.json").write_text(json.dumps(plans.plans, indent=2))
        (folder / "dataset.json").write_text(json.dumps(plans.dataset_json, indent=2))
        (folder / "config.json").write_text(config.to_json())
        network = build_dense_net(plans, in_channels, masked_input=masked_input)
        checkpoint = {"network_weights": network.state_dict(), "iteration": 0, "screener_config": config.to_dict(),
                      "in_channels": in_channels, "masked_input": masked_input, "stage": stage, "variant": variant,
                      "trainer_name": "untrained control (benchmarks/untrained_models.py)"}
        save_checkpoint(checkpoint, folder / FINAL_CHECKPOINT)
        folders.append(folder)
    return folders


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/untrained_models.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="dataset id or name")
    parser.add_argument("plans", help="plans name")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the initialisation (default 0)")
    args = parser.parse_args(argv)
    for folder in write_untrained_models(args.dataset, args.plans, args.seed):
        print(f"untrained model written: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seeds of a training run, all derived from the config's top-level ``seed`` (``--seed N``).

Two runs with the same config and seed on the CPU produce the same weights: the network's initialisation, the
training-time randomness (e.g. the density stage's noise) and the loader workers' generators are all seeded.
"""
from __future__ import annotations

import random

import numpy as np
import torch

_BASE = 12345  # the loader seed of a seed-0, rank-0 run at iteration 0 (unchanged from earlier versions)
_PER_RANK = 1_000_003
_PER_SEED = 100_000_007


def run_seed(config_seed: int, rank: int = 0, iteration: int = 0) -> int:
    """The seed of one rank of a run at ``iteration``: differs per rank and per resume point, so ranks and resumed
    runs do not replay each other's batches; in [0, 2**32) as numpy needs."""
    return (_BASE + _PER_SEED * int(config_seed) + _PER_RANK * int(rank) + int(iteration)) % 2**32


def seed_everything(seed: int) -> None:
    """Seeds python ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

"""Optimization settings of a Screener stage: the schedule fields, AdamW and the warm-up / linear-decay LR.

AdamW (lr, weight decay, eps from the config) with a per-iteration LambdaLR: linear warm-up from 0, then linear
decay to 0 (chosen over the authors' OneCycleLR, see docs/method-notes.md 2.6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from nnscreener.errors import ScreenerError


@dataclass(frozen=True)
class Schedule:
    """The optimization settings shared by ``SSLConfig`` and ``DensityConfig`` (iterations, not epochs)."""

    num_iterations: int
    warmup_iterations: int
    learning_rate: float
    weight_decay: float
    adam_eps: float
    grad_clip: float
    checkpoint_every: int
    log_every: int
    batch_size: int

    @classmethod
    def from_section(cls, section: Any, section_name: str) -> "Schedule":
        """Reads the fields from a config section and checks them (ScreenerError naming ``section_name.field``)."""
        values = {f: getattr(section, f) for f in cls.__dataclass_fields__}
        for name in ("num_iterations", "checkpoint_every", "log_every", "batch_size"):
            if values[name] < 1:
                raise ScreenerError(f"{section_name}.{name} must be >= 1, got {values[name]}")
        if values["warmup_iterations"] < 0 or values["learning_rate"] <= 0 or values["grad_clip"] <= 0:
            raise ScreenerError(f"{section_name}: warmup_iterations must be >= 0, learning_rate and grad_clip > 0 "
                                f"(got {values['warmup_iterations']}, {values['learning_rate']}, "
                                f"{values['grad_clip']})")
        return cls(**values)


def warmup_then_linear_decay(warmup_iterations: int, num_iterations: int) -> Callable[[int], float]:
    """LR factor for update ``s`` (0-based): ``s / warmup`` during warm-up, then linear decay to 0 at the end.

    The factor is 0 at ``s = 0`` (warm-up from 0, as the paper says) and at ``s = num_iterations``.
    """
    warmup = max(0, int(warmup_iterations))
    total = max(1, int(num_iterations))

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def build_optimizer(parameters: Iterable[nn.Parameter], schedule: Schedule) -> Tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over ``parameters`` and its per-iteration warm-up / linear-decay scheduler."""
    optimizer = torch.optim.AdamW(parameters, lr=schedule.learning_rate, weight_decay=schedule.weight_decay,
                                  eps=schedule.adam_eps)
    return optimizer, LambdaLR(optimizer, warmup_then_linear_decay(schedule.warmup_iterations,
                                                                   schedule.num_iterations))

"""Data-dependent initialisation shared by the density models (Glow's ActNorm, the Gaussians).

A density trained for a few hundred steps must start where the data are: a model that starts at N(0, I) and moves
each parameter by at most ~lr per AdamW step never reaches descriptors whose means and scales differ from 0 and 1
(docs/method-notes.md 3.3). Each data-initialised module sets itself from the first batch it sees (in training,
the noised pooled descriptors) and records that in a buffer, so a loaded checkpoint is never re-initialised.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import distributed as dist
from torch import nn


@torch.no_grad()
def channel_mean_and_variance(y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance over batch and space, averaged over DDP ranks so they agree.

    Args:
        y: (B, D, Z, Y, X) maps.

    Returns:
        mean, variance: each (D,) float32.
    """
    flat = y.transpose(0, 1).reshape(y.shape[1], -1).float()  # (D, B*Z*Y*X)
    moments = torch.stack([flat.mean(dim=1), flat.square().mean(dim=1)])  # (2, D): E[y], E[y^2]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(moments)
        moments /= dist.get_world_size()
    mean = moments[0]
    return mean, (moments[1] - mean.square()).clamp_min(0)


class DataInitialized(nn.Module):
    """A module whose parameters are set from the first batch it sees (see :meth:`initialize_from`).

    ``initialized`` is a buffer, so it travels with the state dict; a host-side copy avoids a device sync on every
    forward.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized_seen = False

    def is_initialized(self) -> bool:
        if not self._initialized_seen:
            self._initialized_seen = bool(self.initialized)
        return self._initialized_seen

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a checkpoint written before the buffer existed holds a trained (hence initialised) model
        state_dict.setdefault(prefix + "initialized", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized_seen = False  # re-read the loaded buffer on the next forward

    def initialize_once_from(self, y: torch.Tensor) -> None:
        """Calls :meth:`initialize_from` on the first batch only."""
        if not self.is_initialized():
            self.initialize_from(y)
            self.initialized.fill_(True)
            self._initialized_seen = True

    def initialize_from(self, y: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement initialize_from")

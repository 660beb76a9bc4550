"""Dense SSL objectives on paired voxel embeddings (paper App. A; docs/method-notes.md 2.5).

Pure functions on (N, D) tensors, where row i of ``z1`` and row i of ``z2`` embed the same scan point seen in two
views. Under torch.distributed (DDP), the statistics that mix samples (VICReg's variance and covariance,
InfoNCE's negatives) use the embeddings of all ranks, gathered with gradient (nnU-Net's ``AllGatherGrad``);
every rank must then hold the same N. The invariance term and the InfoNCE anchors stay local, so DDP's gradient
averaging yields the gradient of the global loss. Half-precision (autocast) inputs are computed in float32.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import distributed as dist


class VICRegTerms(NamedTuple):
    """The three VICReg terms (scalars): invariance (MSE), variance (hinge on std), covariance (off-diagonal)."""

    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_across_ranks(z: Tensor) -> Tuple[Tensor, int]:
    """All ranks' (N, D) rows stacked to (world*N, D), differentiable; and this rank's row offset in it.

    Without distributed training this is ``(z, 0)``.
    """
    world = _world_size()
    if world == 1:
        return z, 0
    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    gathered = AllGatherGrad.apply(z)  # (world, N, D)
    return gathered.reshape(-1, z.shape[-1]), dist.get_rank() * z.shape[0]


def _at_least_fp32(z: Tensor) -> Tensor:
    """Half-precision inputs (autocast) are computed in float32; float64 stays float64."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _check_pairs(z1: Tensor, z2: Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"expected two (N, D) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"need at least N=2 pairs for variance/covariance/negatives, got N={z1.shape[0]}")


def _variance_term(z: Tensor, eps: float) -> Tensor:
    """mean_d relu(1 - sqrt(var_d + eps)), unbiased variance over the N rows."""
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)
    return F.relu(1.0 - std).mean()


def _covariance_term(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal entries of the (D, D) covariance (centred Z^T Z / (N-1)), divided by D."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


def vicreg_terms(z1: Tensor, z2: Tensor, eps: float = 1e-4) -> VICRegTerms:
    """VICReg's terms for paired expanded embeddings.

    Args:
        z1, z2: (N, D) expander outputs of the paired voxels of view 1 and view 2.
        eps: added to the variance under the square root.

    Returns:
        invariance = MSE over all N*D entries; variance and covariance averaged over the two views.

    Raises:
        ValueError: shapes differ or N < 2.
    """
    _check_pairs(z1, z2)
    z1, z2 = _at_least_fp32(z1), _at_least_fp32(z2)
    invariance = F.mse_loss(z1, z2)
    g1, _ = gather_across_ranks(z1)
    g2, _ = gather_across_ranks(z2)
    variance = 0.5 * (_variance_term(g1, eps) + _variance_term(g2, eps))
    covariance = 0.5 * (_covariance_term(g1) + _covariance_term(g2))
    return VICRegTerms(invariance, variance, covariance)


def vicreg_loss(terms: VICRegTerms, weights: Sequence[float] = (25.0, 25.0, 1.0)) -> Tensor:
    """Weighted sum ``w_inv * invariance + w_var * variance + w_cov * covariance`` (the authors' 25/25/1)."""
    w_inv, w_var, w_cov = weights
    return w_inv * terms.invariance + w_var * terms.variance + w_cov * terms.covariance


def infonce_loss(p1: Tensor, p2: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric InfoNCE over paired projections, with every other embedding as a negative.

    Each anchor (row i of either view) has its partner (row i of the other view) as the positive and the
    2N-2 other embeddings of both views as negatives, including other voxels of the same image. Cosine
    similarities (L2-normalized embeddings) divided by ``temperature``; cross-entropy averaged over the 2N
    anchors (both directions).

    Args:
        p1, p2: (N, D) projector outputs of view 1 and view 2.
        temperature: softmax temperature tau.

    Returns:
        Scalar loss in nats.

    Raises:
        ValueError: shapes differ or N < 2.
    """
    _check_pairs(p1, p2)
    p1 = F.normalize(_at_least_fp32(p1), dim=1)
    p2 = F.normalize(_at_least_fp32(p2), dim=1)
    g1, offset = gather_across_ranks(p1)
    g2, _ = gather_across_ranks(p2)
    n = p1.shape[0]
    targets = torch.arange(offset, offset + n, device=p1.device)
    self_mask = F.one_hot(targets, g1.shape[0]).bool()  # (n, N_all): an anchor is not its own negative

    def direction(anchors: Tensor, same_view: Tensor, other_view: Tensor) -> Tensor:
        cross = anchors @ other_view.T / temperature  # (n, N_all); the positive sits at column `target`
        within = (anchors @ same_view.T / temperature).masked_fill(self_mask, float("-inf"))
        return F.cross_entropy(torch.cat([cross, within], dim=1), targets)

    return 0.5 * (direction(p1, g1, g2) + direction(p2, g2, g1))

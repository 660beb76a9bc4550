"""Glow normalizing flows applied per voxel to dense maps (paper App. C eqs. 5-6; docs/method-notes.md 3.1-3.2).

Every layer works on (B, D, Z, Y, X) maps with 1x1x1 convolutions, so voxels never mix: the flow is the same
invertible function f(y; c) of one voxel's descriptor y (D values) and condition c (Dc values), evaluated at
every voxel at once. A Glow block is ActNorm -> invertible 1x1 -> affine coupling (Kingma & Dhariwal, 2018; no
squeeze or split). The conditional flow feeds the condition into every coupling network (as in CFlow-AD) and
replaces every ActNorm by a ConditionalActNorm whose per-voxel shift and log-scale are predicted from c.

Numerical safety: the flow clamps its input and the activations entering every block to +-FEATURE_BOUND
(``nnscreener.density.gaussian``; inactive for in-distribution data), and every log-determinant term is bounded
or computed stably, so the NLL stays finite for any finite input.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnscreener.density.data_init import DataInitialized, channel_mean_and_variance
from nnscreener.density.gaussian import LOG_2PI, bound_features

#: ConditionalActNorm's condition-dependent log-scale lies in (-bound, bound) (a tanh soft clamp).
CONDITIONAL_LOG_SCALE_BOUND = 5.0


def _voxel_map(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcasts a scalar or (B, 1, Z, Y, X) log-determinant to ``like``'s (B, 1, Z, Y, X) grid."""
    b, _, z, y, x = like.shape
    return values.expand(b, 1, z, y, x).to(like.dtype)


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=1)


def _zero_init(layer: nn.Conv3d) -> nn.Conv3d:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FlowLayer(nn.Module):
    """An invertible map of each voxel's descriptor, optionally conditioned.

    Sign convention (for every layer, block and the whole flow):

    - ``forward(y, c) -> (z, logdet)`` maps data y to latent z and returns ``logdet = log|det dz/dy|`` per voxel,
      shape (B, 1, Z, Y, X).
    - ``inverse(z, c) -> (y, -logdet)`` maps back and returns ``log|det dy/dz| = -log|det dz/dy|`` at that point.

    So ``-log q(y | c) = 0.5 ||z||^2 + (D/2) log(2 pi) - logdet``. ``c`` is the (B, Dc, Z, Y, X) condition map on the
    same grid as y, or None for unconditional layers.
    """

    def forward(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def inverse(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement inverse")


class ActNorm(FlowLayer, DataInitialized):
    """Per-channel affine z = (y + loc) * exp(log_scale), initialised from the first batch it sees.

    On the first forward, loc = -mean and log_scale = -log(std + 1e-6) over batch and space, so that batch comes out
    with zero mean and unit variance per channel. ``initialized`` is a buffer, so a loaded checkpoint is not
    re-initialised. logdet = sum_d log_scale_d (the same at every voxel).

    Args:
        dim: D, channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, dim, 1, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, dim, 1, 1, 1))

    @torch.no_grad()
    def initialize_from(self, y: torch.Tensor) -> None:
        """Data-dependent initialisation from a (B, D, Z, Y, X) batch (averaged over DDP ranks, so they agree)."""
        mean, variance = channel_mean_and_variance(y)
        self.loc.copy_(-mean.view_as(self.loc))
        self.log_scale.copy_(-torch.log(variance.sqrt() + 1e-6).view_as(self.log_scale))

    def forward(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        self.initialize_once_from(y)
        z = (y + self.loc) * torch.exp(self.log_scale)
        return z, _voxel_map(self.log_scale.sum().view(1, 1, 1, 1, 1), y)

    def inverse(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        y = z * torch.exp(-self.log_scale) - self.loc
        return y, _voxel_map(-self.log_scale.sum().view(1, 1, 1, 1, 1), z)


class ConditionalActNorm(ActNorm):
    """ActNorm whose shift and log-scale also depend on the condition at each voxel.

    z = (y + loc + dloc(c)) * exp(log_scale + dlog_scale(c)), with (dloc, dlog_scale) = net(c),
    net = 1x1 conv(Dc -> H), ReLU, 1x1 conv(H -> 2D) whose last layer starts at zero: the condition-dependent part
    starts as the identity, and the unconditional part gets ActNorm's data-dependent initialisation.
    dlog_scale is soft-clamped to (-5, 5) so extreme conditions cannot overflow exp().
    logdet = sum_d (log_scale_d + dlog_scale_d(c)) per voxel.

    Args:
        dim: D, channels of y.
        cond_dim: Dc, channels of c.
        hidden: H.
    """

    def __init__(self, dim: int, cond_dim: int, hidden: int) -> None:
        super().__init__(dim)
        self.net = nn.Sequential(_conv1x1(cond_dim, hidden), nn.ReLU(), _zero_init(_conv1x1(hidden, 2 * dim)))

    def _shift_and_log_scale(self, c: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if c is None:
            raise ValueError("ConditionalActNorm needs a condition map")
        dloc, raw = self.net(c).chunk(2, dim=1)  # each (B, D, Z, Y, X)
        dlog_scale = CONDITIONAL_LOG_SCALE_BOUND * torch.tanh(raw / CONDITIONAL_LOG_SCALE_BOUND)
        return self.loc + dloc, self.log_scale + dlog_scale

    def forward(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        self.initialize_once_from(y)
        shift, log_scale = self._shift_and_log_scale(c)
        return (y + shift) * torch.exp(log_scale), log_scale.sum(dim=1, keepdim=True)

    def inverse(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self._shift_and_log_scale(c)
        return z * torch.exp(-log_scale) - shift, -log_scale.sum(dim=1, keepdim=True)


class Invertible1x1(FlowLayer):
    """z = W y at every voxel (a 1x1x1 convolution), W initialised as the Q of a Gaussian matrix's QR.

    logdet = log|det W|, computed with slogdet in float64 (float32/float16 determinants of a 32x32 matrix lose
    precision, notably under mixed precision).

    Args:
        dim: D, channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
        self.weight = nn.Parameter(q.float())

    def _log_abs_det(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight.double())[1]

    def forward(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        w = self.weight.to(y.dtype)
        z = F.conv3d(y, w[:, :, None, None, None])
        return z, _voxel_map(self._log_abs_det().view(1, 1, 1, 1, 1), y)

    def inverse(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        w_inv = torch.linalg.inv(self.weight.double()).to(z.dtype)
        y = F.conv3d(z, w_inv[:, :, None, None, None])
        return y, _voxel_map(-self._log_abs_det().view(1, 1, 1, 1, 1), z)


class AffineCoupling(FlowLayer):
    """Affine coupling: y = (y1, y2) -> (y1, (y2 + t) * s), with (t, h) = net(y1 [, c]) and s = sigmoid(h + 2).

    y1 is the first D // 2 channels. net = 1x1 conv(D//2 [+ Dc] -> H), ReLU, 1x1 conv(H -> H), ReLU,
    1x1 conv(H -> 2 (D - D//2)) with the last layer zero-initialised (so the layer starts as a fixed rescaling by
    sigmoid(2)). With ``cond_dim > 0`` the condition is concatenated to y1 at the net's input (CFlow-AD style).
    logdet = sum log sigmoid(h + 2) per voxel (computed with logsigmoid, finite for any h).

    Args:
        dim: D, channels of y (>= 2).
        hidden: H (config ``density.flow_hidden``).
        cond_dim: Dc, channels of the condition; 0 for an unconditional layer.
    """

    def __init__(self, dim: int, hidden: int, cond_dim: int = 0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"affine coupling needs at least 2 channels, got {dim}")
        self.split = dim // 2
        self.cond_dim = cond_dim
        self.net = nn.Sequential(
            _conv1x1(self.split + cond_dim, hidden), nn.ReLU(),
            _conv1x1(hidden, hidden), nn.ReLU(),
            _zero_init(_conv1x1(hidden, 2 * (dim - self.split))),
        )

    def _shift_and_scale_logits(self, y1: torch.Tensor, c: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.cond_dim:
            if c is None:
                raise ValueError("a conditional AffineCoupling needs a condition map")
            y1 = torch.cat([y1, c], dim=1)
        t, h = self.net(y1).chunk(2, dim=1)
        return t, h + 2.0

    def forward(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        y1, y2 = y[:, :self.split], y[:, self.split:]
        t, logits = self._shift_and_scale_logits(y1, c)
        z2 = (y2 + t) * torch.sigmoid(logits)
        return torch.cat([y1, z2], dim=1), F.logsigmoid(logits).sum(dim=1, keepdim=True)

    def inverse(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = z[:, :self.split], z[:, self.split:]
        t, logits = self._shift_and_scale_logits(z1, c)
        y2 = z2 * torch.exp(-F.logsigmoid(logits)) - t
        return torch.cat([z1, y2], dim=1), -F.logsigmoid(logits).sum(dim=1, keepdim=True)


class GlowBlock(FlowLayer):
    """(Conditional)ActNorm -> Invertible1x1 -> AffineCoupling.

    Args:
        dim: D, channels of y.
        hidden: H, width of the coupling (and conditional actnorm) networks.
        cond_dim: Dc; 0 gives the unconditional Glow block.
    """

    def __init__(self, dim: int, hidden: int, cond_dim: int = 0) -> None:
        super().__init__()
        norm = ConditionalActNorm(dim, cond_dim, hidden) if cond_dim else ActNorm(dim)
        self.layers = nn.ModuleList([norm, Invertible1x1(dim), AffineCoupling(dim, hidden, cond_dim)])

    def forward(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros_like(y[:, :1])
        for layer in self.layers:
            y, layer_logdet = layer(y, c)
            logdet = logdet + layer_logdet
        return y, logdet

    def inverse(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros_like(z[:, :1])
        for layer in reversed(self.layers):
            z, layer_logdet = layer.inverse(z, c)
            logdet = logdet + layer_logdet
        return z, logdet


class Flow(FlowLayer):
    """A stack of Glow blocks.

    The input and the activations entering every block are clamped to +-``FEATURE_BOUND`` (a no-op for in-distribution
    data) so that far out-of-distribution inputs give large but finite values instead of inf / NaN.

    Args:
        dim: D, channels of y.
        num_blocks: number of Glow blocks (config ``density.flow_blocks``).
        hidden: H (config ``density.flow_hidden``).
        cond_dim: Dc; 0 gives an unconditional flow.
    """

    def __init__(self, dim: int, num_blocks: int, hidden: int, cond_dim: int = 0) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"a flow needs at least one block, got {num_blocks}")
        self.dim = dim
        self.cond_dim = cond_dim
        self.blocks = nn.ModuleList([GlowBlock(dim, hidden, cond_dim) for _ in range(num_blocks)])

    def forward(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros_like(y[:, :1])
        for block in self.blocks:
            y, block_logdet = block(bound_features(y), c)
            logdet = logdet + block_logdet
        return bound_features(y), logdet

    def inverse(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros_like(z[:, :1])
        for block in reversed(self.blocks):
            z, block_logdet = block.inverse(z, c)
            logdet = logdet + block_logdet
        return z, logdet


class FlowDensity(nn.Module):
    """q(y | c) through a Glow flow to a standard normal latent (paper eqs. 5-6).

    Args:
        dim: D, channels of the descriptor map.
        num_blocks: Glow blocks (config ``density.flow_blocks``; 64 in the paper).
        hidden: coupling width (config ``density.flow_hidden``; 512 in the paper).
        cond_dim: Dc, channels of the condition map; 0 for a marginal flow.
    """

    def __init__(self, dim: int, num_blocks: int, hidden: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.cond_dim = cond_dim
        self.flow = Flow(dim, num_blocks, hidden, cond_dim)

    def nll(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Negative log-density map: 0.5 ||z||^2 + (D/2) log(2 pi) - log|det dz/dy| per voxel.

        Args:
            y: (B, D, Z, Y, X) descriptor map.
            c: (B, Dc, Z, Y, X) condition map, or None for a marginal flow.

        Returns:
            (B, 1, Z, Y, X) NLL in nats.
        """
        z, logdet = self.flow(y, self._condition(c))
        return 0.5 * z.square().sum(dim=1, keepdim=True) + 0.5 * self.dim * LOG_2PI - logdet

    def latent_energy(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """0.5 ||z||^2 per voxel: :meth:`nll` without the log-volume term (log 2 pi and log|det dz/dy|), i.e. the
        energy of the latent the flow maps y to; chi-square(D)/2 distributed under the model at every voxel.
        Shapes as :meth:`nll`."""
        z, _ = self.flow(y, self._condition(c))
        return 0.5 * z.square().sum(dim=1, keepdim=True)

    def _condition(self, c: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The bounded condition map of a conditional flow; None for a marginal one."""
        if not self.cond_dim:
            return None
        if c is None:
            raise ValueError("this flow is conditional: it needs a condition map")
        return bound_features(c)

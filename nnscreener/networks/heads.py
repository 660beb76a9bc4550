"""SSL heads on voxel embeddings: the VICReg expander and the InfoNCE projector (docs/method-notes.md 2.5).

Both are MLPs on (N, D) vectors: ``Linear -> LayerNorm -> GELU`` blocks and a last ``Linear`` without bias
(the ``dev`` vox2vec code's choice). They exist only during pretraining; the dense features themselves are the
network's output.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from nnscreener.config import SSLConfig
from nnscreener.errors import ScreenerError


class MLPHead(nn.Module):
    """``in_dim -> dims[0] -> ... -> dims[-1]``: Linear-LayerNorm-GELU blocks, then a bias-free Linear.

    Args:
        in_dim: D, the embedding size (the dense net's d).
        dims: widths of the layers; the last one is the output size.
    """

    def __init__(self, in_dim: int, dims: Sequence[int]):
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or min(dims) < 1 or in_dim < 1:
            raise ScreenerError(f"SSL head needs positive widths, got in_dim={in_dim}, dims={dims}")
        layers = []
        width = in_dim
        for hidden in dims[:-1]:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, dims[-1], bias=False))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = int(in_dim), dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, dims[-1])."""
        return self.layers(x)


def ssl_head_dims(ssl: SSLConfig) -> Sequence[int]:
    """The widths of the head the objective uses: the expander (vicreg) or the projector (infonce)."""
    dims = {"vicreg": ssl.vicreg_expander_dims, "infonce": ssl.infonce_projector_dims}
    if ssl.objective not in dims:
        raise ScreenerError(f"ssl.objective={ssl.objective!r} is not one of {sorted(dims)}")
    return dims[ssl.objective]


def build_ssl_head(ssl: SSLConfig, embedding_dim: int) -> MLPHead:
    """The expander / projector for ``ssl.objective`` on d-dimensional voxel embeddings."""
    return MLPHead(embedding_dim, ssl_head_dims(ssl))

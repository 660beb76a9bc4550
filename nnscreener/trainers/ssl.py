"""Dense self-supervised pretraining of the descriptor and condition models (paper 3.1-3.2, App. A).

Both stages train a :class:`~nnscreener.networks.dense_net.DenseFeatureNet` on pairs of overlapping augmented
views (docs/design.md C7 batches): the dense maps of both views are read at the paired voxels, the expander
(VICReg) or projector (InfoNCE) maps them, and the objective pulls partners together. The condition model
sees randomly block-masked views and the mask as a second input channel, ``concat(view * mask, mask)``, so its
features must carry context that survives masking; at inference its mask is all ones.

Logged per period: the loss terms (``loss/...``) and SSL health signals on the d-dimensional voxel embeddings
(``health/...``): the mean per-dimension std (collapse shows as ~0), and the cosine similarity of positive pairs
vs random pairs (a healthy run has the first well above the second).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnscreener import stages
from nnscreener.config import SSLConfig, ScreenerConfig
from nnscreener.networks.dense_net import build_dense_net, features_at
from nnscreener.networks.heads import build_ssl_head
from nnscreener.networks.losses import infonce_loss, vicreg_loss, vicreg_terms
from nnscreener.trainers.base import ScreenerTrainerBase

Objective = Callable[[Tensor, Tensor, SSLConfig], Tuple[Tensor, Dict[str, Tensor]]]


def _vicreg(z1: Tensor, z2: Tensor, ssl: SSLConfig) -> Tuple[Tensor, Dict[str, Tensor]]:
    terms = vicreg_terms(z1, z2, ssl.vicreg_eps)
    return vicreg_loss(terms, ssl.vicreg_weights), {"loss/invariance": terms.invariance,
                                                    "loss/variance": terms.variance,
                                                    "loss/covariance": terms.covariance}


def _infonce(p1: Tensor, p2: Tensor, ssl: SSLConfig) -> Tuple[Tensor, Dict[str, Tensor]]:
    loss = infonce_loss(p1, p2, ssl.infonce_temperature)
    return loss, {"loss/infonce": loss}


OBJECTIVES: Dict[str, Objective] = {"vicreg": _vicreg, "infonce": _infonce}


@torch.no_grad()
def ssl_health(e1: Tensor, e2: Tensor) -> Dict[str, float]:
    """Collapse / learning signals on paired voxel embeddings.

    Args:
        e1, e2: (N, d) dense features of the paired voxels of view 1 and view 2.

    Returns:
        ``health/embedding_std``: mean over dimensions of the std over both views' N embeddings;
        ``health/cos_positive``: mean cosine similarity of partners; ``health/cos_random``: the same for
        partners shuffled by a random permutation.
    """
    e1, e2 = e1.float(), e2.float()
    std = torch.cat([e1, e2]).std(dim=0).mean()
    positive = F.cosine_similarity(e1, e2, dim=1).mean()
    shuffled = e2[torch.randperm(e2.shape[0], device=e2.device)]
    random = F.cosine_similarity(e1, shuffled, dim=1).mean()
    values = torch.stack([std, positive, random]).tolist()  # one device sync
    return dict(zip(("health/embedding_std", "health/cos_positive", "health/cos_random"), values))


class SSLTrainerBase(ScreenerTrainerBase):
    """Shared by the descriptor and condition stages; they differ in ``in_channels`` and masking only."""

    config_section = "ssl"
    in_channels: int = 1
    masking: bool = False

    @classmethod
    def variant_for(cls, config: ScreenerConfig) -> str:
        return stages.ssl_variant(config.ssl.objective, config.network.embedding_dim)

    def build_network(self) -> nn.Module:
        return build_dense_net(self.screener_plans, self.in_channels, masked_input=self.masking)

    def build_extra_modules(self) -> Dict[str, nn.Module]:
        return {"ssl_head": build_ssl_head(self.screener_config.ssl, self.screener_config.network.embedding_dim)}

    def checkpoint_extras(self) -> Dict[str, Any]:
        return {"in_channels": self.in_channels, "masked_input": self.masking}

    def build_loader(self, identifiers: List[str], seed: int):
        from nnscreener.data.loaders import make_ssl_loader
        plans = self.screener_plans.with_overrides({"ssl": {"batch_size": self.batch_size}})  # per DDP rank
        return make_ssl_loader(plans, identifiers, masking=self.masking, num_workers=self.num_loader_workers(),
                               seed=seed, pin_memory=self.device.type == "cuda")

    def network_input(self, view: Tensor, mask: Tensor) -> Tensor:
        """What the network sees of a view: (B, 1, Z, Y, X) for the descriptor."""
        return view

    def compute_loss(self, batch: Mapping[str, Any]) -> Tuple[Tensor, Dict[str, float]]:
        """Dense maps of both views (one forward), features at the paired voxels, head, objective."""
        dev = self.device
        x = torch.cat([self.network_input(torch.as_tensor(batch[f"view{k}"]).to(dev, non_blocking=True),
                                          torch.as_tensor(batch[f"mask{k}"]).to(dev, non_blocking=True))
                       for k in (1, 2)])  # (2B, C_in, Z, Y, X)
        maps = self.network(x)  # (2B, d, Z, Y, X)
        b = maps.shape[0] // 2
        e1 = features_at(maps[:b], torch.as_tensor(batch["idx1"])).reshape(-1, maps.shape[1])  # (B*n, d)
        e2 = features_at(maps[b:], torch.as_tensor(batch["idx2"])).reshape(-1, maps.shape[1])
        head = self.extra_modules["ssl_head"]
        z = head(torch.cat([e1, e2]))  # one head call: DDP expects one forward per step
        ssl = self.screener_config.ssl
        loss, terms = OBJECTIVES[ssl.objective](z[: e1.shape[0]], z[e1.shape[0]:], ssl)
        logged = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
        logged.update(ssl_health(e1.detach(), e2.detach()))
        return loss, logged


class DescriptorTrainer(SSLTrainerBase):
    """The descriptor model: dense features of the image alone (in_channels 1, no masking)."""

    stage = "descriptor"
    in_channels = stages.input_channels(stage)
    masking = stages.masked_input(stage)


class ConditionTrainer(SSLTrainerBase):
    """The condition model: block-masked views, input ``concat(view * mask, mask)`` (in_channels 2), built from the
    plans' masking-invariant condition configuration with a mask token (see ``build_dense_net``)."""

    stage = "condition"
    in_channels = stages.input_channels(stage)
    masking = stages.masked_input(stage)

    def network_input(self, view: Tensor, mask: Tensor) -> Tensor:
        """(B, 2, Z, Y, X): the masked view and the mask (1 visible, 0 masked)."""
        return torch.cat([view * mask, mask], dim=1)

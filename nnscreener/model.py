"""The Screener model apart from any training loop: frozen descriptor, condition encoder, density (docs/design.md C9).

    x (B, 1, Z, Y, X) in [0, 1] --descriptor--> (B, D, Z, Y, X) --avg-pool--> y (B, D, z', y', x')
    x, origin_zyx ----------------condition--------------------------------> c (B, Dc, z', y', x') or None
    anomaly map = density.nll(y, c) = -log q(y | c)   (B, 1, z', y', x'), nats per pooled voxel
                  (or, with ``inference.score = "latent"``, density.latent_energy(y, c) = 0.5 ||z||^2)

x is channel 0 of the patches (the CLAHE image); the optional intensity channels appended to y read channel 1, the
HU window without CLAHE, where the preprocessing keeps it (``preprocessing.keep_window_channel``), else x; with
``density.intensity_from_all_channels`` they read both channels (features of channel 0, then of channel 1).
(z', y', x') = (Z // sz, Y // sy, X // sx) with the pooling stride ``density.pool_stride_zyx``. The score is a
negative log-density of the descriptor under what the model learned to expect at that position: higher means
rarer. It is not a probability of disease and its scale depends on the trained model.

Only the density's parameters are trained; the descriptor and the learned condition model stay frozen (eval mode,
no gradients). A density checkpoint holds the state dict of the whole :class:`ScreenerModel`, so
:func:`load_screener_model` needs nothing but the density result folder.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from nnscreener import stages
from nnscreener.checkpoints import FINAL_CHECKPOINT, load_density_checkpoint, trained_checkpoint
from nnscreener.config import SCORES, ScreenerConfig
from nnscreener.density.conditions import (ConditionEncoder, average_pool, condition_option, density_option,
                                           network_embedding_dim)
from nnscreener.density.intensity import IntensityFeatures
from nnscreener.errors import ScreenerError

DENSITY_STAGE = stages.DENSITY


def intensity_channels_for(image_channels: int, all_channels: bool = False) -> Tuple[int, ...]:
    """The stored channels the intensity features read: every one (``density.intensity_from_all_channels``), or the
    last (the HU window where it is kept, else the network input)."""
    return tuple(range(image_channels)) if all_channels else (image_channels - 1,)


class ScreenerModel(nn.Module):
    """Descriptor + condition encoder + density model, applied to patches.

    Args:
        descriptor: (B, 1, Z, Y, X) -> (B, D, Z, Y, X) dense features (a trained DenseFeatureNet); frozen here.
        condition: a :class:`~nnscreener.density.conditions.ConditionEncoder` giving the condition map on the pooled
            grid (:class:`~nnscreener.density.conditions.NoCondition` for a marginal density).
        density: a module with ``nll(y, c) -> (B, 1, z', y', x')`` in nats.
        pool_stride_zyx: average-pooling kernel = stride (z, y, x) in voxels for the descriptor map.
        noise_std: std of the Gaussian noise added to the pooled descriptors and conditions in training mode only.
        intensity: optional intensity channels (smoothed intensities, a soft histogram) appended to the descriptor
            before pooling (:mod:`nnscreener.density.intensity`); y then has D + S channels.
        image_channels: channels of the patches (``preprocessing.channels``): 1 = the network input, which the
            intensity features read too; 2 = the network input and the HU window without CLAHE, which the
            intensity features read instead (``preprocessing.keep_window_channel``).
        intensity_channels: the channels the intensity features read, each giving ``intensity.out_channels``
            channels of y in this order; default the last (the window where it is kept, else the network input).
        score: what :meth:`anomaly_map` returns (:data:`nnscreener.config.SCORES`): ``"nll"`` = -log q(y | c),
            ``"latent"`` = the density's ``latent_energy(y, c)`` (the NLL without its log-volume term). Training
            always minimises the NLL. May be changed after loading (``nnScreener_predict --score``).
    """

    def __init__(self, descriptor: nn.Module, condition: ConditionEncoder, density: nn.Module,
                 pool_stride_zyx: Sequence[int], noise_std: float,
                 intensity: Optional[IntensityFeatures] = None, score: str = "nll", image_channels: int = 1,
                 intensity_channels: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if image_channels not in (1, 2):
            raise ValueError(f"image_channels must be 1 or 2, got {image_channels}")
        self.image_channels = int(image_channels)
        self.intensity_channels = tuple(intensity_channels or intensity_channels_for(image_channels))
        if not all(0 <= ch < image_channels for ch in self.intensity_channels):
            raise ValueError(f"intensity_channels {self.intensity_channels} outside the {image_channels} channels")
        self.descriptor = descriptor.eval().requires_grad_(False)
        self.intensity = intensity
        self.condition = condition
        self.density = density
        self.pool_stride_zyx = tuple(int(s) for s in pool_stride_zyx)
        self.noise_std = float(noise_std)
        self.score = score

    def train(self, mode: bool = True) -> "ScreenerModel":
        super().train(mode)
        self.descriptor.eval()  # frozen: never switches to training behaviour (a learned condition does the same)
        return self

    def pooled_maps(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Pooled descriptor and condition maps, without noise.

        Args:
            x: (B, C, Z, Y, X) patches, intensities in [0, 1], C = :attr:`image_channels` (channel 0 the networks'
                input).
            origin_zyx: (B, 3) int64 voxel index (z, y, x) of each patch's first voxel in the preprocessed volume.

        Returns:
            y (B, D [+ S intensity channels], z', y', x') and c (B, Dc, z', y', x') or None, float32.
        """
        _check_inputs(x, origin_zyx, self.pool_stride_zyx, self.image_channels)
        network_input = x[:, :1]
        with torch.no_grad():
            y = self.descriptor(network_input)
            if self.intensity is not None:
                y = torch.cat([y.float(), *(self.intensity(x[:, ch:ch + 1]) for ch in self.intensity_channels)],
                              dim=1)
            y = average_pool(y, self.pool_stride_zyx)
            c = self.condition(network_input, origin_zyx)
        return y.float(), None if c is None else c.float()

    def _nll(self, y: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        return self._in_float32(self.density.nll, y, c)

    def _score(self, y: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """The anomaly score :attr:`score` of pooled maps: the density's ``nll`` or ``latent_energy``."""
        if self.score not in SCORES:
            raise ScreenerError(f"unknown anomaly score {self.score!r}; known: {list(SCORES)}")
        return self._in_float32(self.density.nll if self.score == "nll" else self.density.latent_energy, y, c)

    @staticmethod
    def _in_float32(density_method, y: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """A density method in float32 even under autocast (flow log-determinants summed over many blocks)."""
        with torch.autocast(device_type=y.device.type, enabled=False):
            return density_method(y, c)

    def forward(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        """NLL map for training: in training mode, N(0, noise_std^2) noise is added to y and c first.

        Args and shapes as :meth:`anomaly_map`.
        """
        y, c = self.pooled_maps(x, origin_zyx)
        if self.training and self.noise_std > 0:
            y = y + self.noise_std * torch.randn_like(y)
            c = None if c is None else c + self.noise_std * torch.randn_like(c)
        return self._nll(y, c)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        """The anomaly score map of a batch of patches (never noised): -log q(y | c), or 0.5 ||z||^2 (:attr:`score`).

        Args:
            x: (B, C, Z, Y, X) patches as :meth:`pooled_maps`; Z, Y, X divisible by the descriptor's total stride.
            origin_zyx: (B, 3) int64 voxel index (z, y, x) of each patch's first voxel in the preprocessed volume
                (may be negative for padded patches); used by the sin-cos condition.

        Returns:
            (B, 1, Z // sz, Y // sy, X // sx) float32 score in nats per pooled voxel.
        """
        y, c = self.pooled_maps(x, origin_zyx)
        return self._score(y, c)

    @torch.no_grad()
    def anomaly_map_and_features(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        """The anomaly map and the pooled descriptor it scores, in one pass (the distillation targets).

        Args and shapes as :meth:`anomaly_map`.

        Returns:
            (B, 1 + D [+ S], z', y', x') float32: channel 0 the score in nats, then the pooled descriptor y.
        """
        y, c = self.pooled_maps(x, origin_zyx)
        return torch.cat([self._score(y, c), y], dim=1)


def _check_inputs(x: torch.Tensor, origin_zyx: torch.Tensor, stride_zyx: Tuple[int, int, int], channels: int) -> None:
    if x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(f"ScreenerModel expects (B, {channels}, Z, Y, X) patches, got shape {tuple(x.shape)}")
    if tuple(origin_zyx.shape) != (x.shape[0], 3):
        raise ValueError(f"origin_zyx must be (B, 3) = ({x.shape[0]}, 3), got {tuple(origin_zyx.shape)}")
    if any(size < stride for size, stride in zip(x.shape[2:], stride_zyx)):
        raise ValueError(f"patch (z, y, x) {tuple(x.shape[2:])} is smaller than the pooling stride {stride_zyx}")


def build_screener_model(config: ScreenerConfig, descriptor: nn.Module,
                         condition_network: Optional[nn.Module] = None) -> ScreenerModel:
    """Assembles a ScreenerModel for ``config.density`` (condition and density variants, pooling, noise).

    Args:
        config: resolved config; ``density.condition`` / ``density.density`` pick the variants.
        descriptor: the descriptor network; D = its ``embedding_dim`` (else ``config.network.embedding_dim``).
        condition_network: the condition network (``stages.input_channels("condition")`` inputs), needed for the
            ``masking`` condition only; Dc = its ``embedding_dim`` (else ``config.network.embedding_dim``).

    Raises:
        ScreenerError: unknown variant, or the ``masking`` condition without a condition network.
    """
    density_cfg = config.density
    condition = condition_option(density_cfg.condition).build(config, condition_network)
    intensity = None
    if density_cfg.intensity_sigmas_mm or density_cfg.intensity_histogram_bins:
        intensity = IntensityFeatures(density_cfg.intensity_sigmas_mm, config.preprocessing.spacing_zyx,
                                      density_cfg.intensity_scale, density_cfg.intensity_histogram_bins)
    channels = config.preprocessing.channels
    intensity_channels = intensity_channels_for(channels, density_cfg.intensity_from_all_channels)
    dim = network_embedding_dim(descriptor, config) + \
        (len(intensity_channels) * intensity.out_channels if intensity is not None else 0)
    density = density_option(density_cfg.density).build(density_cfg, dim, condition.out_channels)
    return ScreenerModel(descriptor, condition, density, density_cfg.pool_stride_zyx, density_cfg.noise_std,
                         intensity, config.inference.score, channels, intensity_channels)


def load_screener_model(density_folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                        checkpoint_name: str = FINAL_CHECKPOINT) -> Tuple[ScreenerModel, ScreenerConfig]:
    """Loads a trained ScreenerModel from a density result folder (docs/design.md C9/C10).

    The folder holds ``plans.json`` and ``dataset.json`` (the network architecture) and the checkpoint, whose
    ``network_weights`` is the whole ScreenerModel state dict, ``screener_config`` the resolved config and, optionally,
    ``embedding_dims`` = {"descriptor": d, "condition": d} of the frozen networks (default
    ``network.embedding_dim``).

    Args:
        density_folder: ``$nnUNet_results/DatasetXXX/density__<condition>_<density>__<plans>/``.
        device: where to put the model (returned in eval mode).
        checkpoint_name: ``FINAL_CHECKPOINT`` or ``LATEST_CHECKPOINT`` (:mod:`nnscreener.checkpoints`).

    Returns:
        The model and the config it was trained with.

    Raises:
        ScreenerError: a missing file, or a checkpoint that is not a density checkpoint.
    """
    from nnscreener.networks.dense_net import build_dense_net
    from nnscreener.plans import load_plans_file

    folder = Path(density_folder)
    checkpoint = load_density_checkpoint(trained_checkpoint(folder, checkpoint_name, "density"))
    config = ScreenerConfig.from_dict(checkpoint["screener_config"])
    plans = replace(load_plans_file(folder / "plans.json", folder / "dataset.json"), config=config)
    dims = checkpoint.get("embedding_dims", {})  # the frozen networks' d, when they differ from the config's
    masked = checkpoint.get("masked_input", {})  # absent in checkpoints written before the mask token
    descriptor = build_dense_net(plans, stages.input_channels("descriptor"), dims.get("descriptor"))
    condition_network = None
    if condition_option(config.density.condition).needs_trained_network:
        condition_network = build_dense_net(plans, stages.input_channels("condition"), dims.get("condition"),
                                            bool(masked.get("condition", False)))
    model = build_screener_model(config, descriptor, condition_network)
    model.load_state_dict(checkpoint["network_weights"])
    return model.to(device).eval(), config


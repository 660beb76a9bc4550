"""The ``baseline_ae`` stage's model: a 3D convolutional autoencoder on the plans' UNet (Baur et al. 2021 in 3D).

The encoder is the plans' PlainConvUNet encoder; a 1x1x1 convolution squeezes its deepest features to
``baseline_ae.latent_channels`` (the spatial bottleneck, at 1 / total stride of the patch) and another expands
them back; the decoder is the UNet decoder's transposed convolutions and convolution stacks (dynamic-network-
architectures' ``StackedConvBlocks``) *without* the skip connections, so everything the output knows passes the
bottleneck; a 1x1x1 convolution gives the reconstruction. Trained with an L1 or L2 reconstruction loss on the
preprocessed [0, 1] patch.

Score: the absolute residual ``|x - x_hat|`` smoothed by a Gaussian of std ``baseline_ae.score_sigma_mm`` mm per
axis (converted to voxels with the plans' spacing; replicate padding at the patch border), in [0, 1] intensity
units: higher = worse reconstructed = more anomalous.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn

from nnscreener.baselines.common import load_baseline_model, planned_unet
from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.density.intensity import gaussian_smooth
from nnscreener.errors import ScreenerError
from nnscreener.plans import ScreenerPlans

STAGE = "baseline_ae"


def reconstruction_loss(x: torch.Tensor, reconstruction: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``l2``) error over all voxels of (B, 1, Z, Y, X) patches."""
    if kind == "l1":
        return (reconstruction - x).abs().mean()
    if kind == "l2":
        return (reconstruction - x).square().mean()
    raise ScreenerError(f"reconstruction loss {kind!r} is not one of ['l1', 'l2']")


class ConvAutoencoder(nn.Module):
    """(B, 1, Z, Y, X) -> (B, 1, Z, Y, X) reconstruction through a spatial bottleneck; no skip connections.

    Args:
        unet: a dynamic-network-architectures UNet of the plans (built for 1 input and 1 output channel); its
            encoder, transposed convolutions and last 1x1x1 output convolution are reused.
        latent_channels: channels of the bottleneck.
    """

    def __init__(self, unet: nn.Module, latent_channels: int) -> None:
        super().__init__()
        if latent_channels < 1:
            raise ScreenerError(f"baseline_ae.latent_channels must be >= 1, got {latent_channels}")
        encoder, decoder = unet.encoder, unet.decoder
        deepest = encoder.output_channels[-1]
        self.encoder = encoder
        self.to_latent = encoder.conv_op(deepest, latent_channels, 1)
        self.from_latent = nn.Sequential(encoder.conv_op(latent_channels, deepest, 1),
                                         encoder.nonlin(**(encoder.nonlin_kwargs or {})))
        self.upsamplers = decoder.transpconvs
        self.stages = nn.ModuleList(self._decoder_stage(encoder, s, len(decoder.stages[s - 1].convs))
                                    for s in range(1, len(encoder.output_channels)))
        self.output = decoder.seg_layers[-1]
        self.shape_divisor_zyx = tuple(int(torch.tensor(encoder.strides)[:, a].prod()) for a in range(3))

    @staticmethod
    def _decoder_stage(encoder: nn.Module, s: int, num_convs: int) -> StackedConvBlocks:
        """Decoder stage ``s`` (1 = deepest): the UNet's, with the skip's channels taken out of its input."""
        features = encoder.output_channels[-(s + 1)]
        return StackedConvBlocks(num_convs, encoder.conv_op, features, features, encoder.kernel_sizes[-(s + 1)], 1,
                                 encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                                 encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) -> (B, latent, Z / sz, Y / sy, X / sx) bottleneck."""
        bad = [s for s, d in zip(x.shape[2:], self.shape_divisor_zyx) if s % d]
        if x.ndim != 5 or bad:
            raise ValueError(f"expected (B, 1, Z, Y, X) with Z, Y, X divisible by {self.shape_divisor_zyx}, got "
                             f"{tuple(x.shape)}")
        features = self.encoder(x)
        deepest = features[-1] if isinstance(features, (list, tuple)) else features
        return self.to_latent(deepest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(self.encode(x))
        for upsample, stage in zip(self.upsamplers, self.stages):
            h = stage(upsample(h))
        return self.output(h)


class AutoencoderModel(nn.Module):
    """The ``baseline_ae`` scoring model (docs/design.md C9): ``forward`` reconstructs, ``anomaly_map`` scores.

    Args:
        autoencoder: a :class:`ConvAutoencoder`.
        sigma_voxels_zyx: std of the score's Gaussian smoothing per axis (z, y, x), in voxels.
    """

    def __init__(self, autoencoder: ConvAutoencoder, sigma_voxels_zyx: Sequence[float]) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.sigma_voxels_zyx: List[float] = [float(s) for s in sigma_voxels_zyx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) in [0, 1] -> (B, 1, Z, Y, X) reconstruction."""
        return self.autoencoder(x)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) float32 smoothed ``|x - x_hat|``; ``origin_zyx`` (B, 3) is not used."""
        residual = (x.float() - self.autoencoder(x).float()).abs()
        return gaussian_smooth(residual, self.sigma_voxels_zyx)


def build_autoencoder_model(plans: ScreenerPlans) -> AutoencoderModel:
    """An untrained :class:`AutoencoderModel` of the plans, with ``plans.config.baseline_ae``'s settings."""
    cfg = plans.config.baseline_ae
    spacing_zyx = plans.configuration_manager.spacing
    autoencoder = ConvAutoencoder(planned_unet(plans, 1, 1), cfg.latent_channels)
    return AutoencoderModel(autoencoder, [cfg.score_sigma_mm / float(s) for s in spacing_zyx])


def load_autoencoder_model(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                           checkpoint_name: str = FINAL_CHECKPOINT):
    """A trained :class:`AutoencoderModel` and its config from a ``baseline_ae`` result folder."""
    return load_baseline_model(folder, STAGE, build_autoencoder_model, device, checkpoint_name)

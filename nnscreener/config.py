"""One typed place for every Screener setting.

Presets (:func:`default_config`, :func:`cpu_config`) are frozen nested dataclasses. The merge order is
preset < the plans' ``"nnscreener"`` block < command-line overrides (``--set section.field=value``).
The resolved config is stored in the plans, in every checkpoint and as ``config.json`` beside it.

Axis order: every geometric field says its order in its name. ``*_xyz`` fields are (x, y, z), the order
users and the paper speak; nnU-Net arrays are (c, z, y, x), so use the ``*_zyx`` properties when indexing
arrays. Units are in the comments (mm, voxels, HU).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Dict, Literal, Mapping, Tuple

from nnscreener.errors import ScreenerError

XYZ = Tuple[float, float, float]
IntXYZ = Tuple[int, int, int]

OBJECTIVES = ("vicreg", "infonce")
RECONSTRUCTION_LOSSES = ("l1", "l2")
CONDITIONS = ("masking", "sincos", "none")
DENSITIES = ("flow", "gaussian")
BLENDINGS = ("uniform", "gaussian")
#: The per-voxel anomaly score (nnscreener/model.py): "nll" = -log q(y | c) (the paper), "latent" = its
#: 0.5 ||z||^2 term alone (no log-volume term; docs/method-notes.md 3.6).
SCORES = ("nll", "latent")
DESCRIPTOR_NORMS = ("instance", "layer")
DISTILL_TARGETS = ("map", "map+features")
#: What baseline_synthetic regresses (nnscreener/baselines/synthetic_anomalies.py): "blend" = the blending factor
#: over the whole region (MOOD-Top1), "visible" = the blending factor only where the blend visibly changed the voxel.
SYNTHETIC_TARGETS = ("blend", "visible")


def _zyx(v: Tuple) -> Tuple:
    return (v[2], v[1], v[0])


@dataclass(frozen=True)
class PreprocessingConfig:
    """Screener preprocessing (paper App. D; docs/method-notes.md section 1)."""

    spacing_xyz: XYZ = (1.5, 1.5, 2.25)  # mm, target voxel spacing (x, y, z)
    body_threshold_hu: float = -500.0  # HU; "dense foreground" threshold for the crop and the body mask
    body_block_mm: float = 5.0  # mm; min-pooling block edge for the dense-foreground crop
    clip_hu: Tuple[float, float] = (-1000.0, 300.0)  # HU window, rescaled to [0, 1]
    use_clahe: bool = True
    clahe_clip_limit: float = 0.05  # skimage's clip_limit (fraction of voxels per tile)
    clahe_nbins: int = 256
    # beyond the paper (on in the cpu preset): also store the clipped and rescaled HU window *before* CLAHE as a second
    # channel of the preprocessed data (channel 0 stays the networks' CLAHE input), read only by the density's
    # intensity features (density.intensity_sigmas_mm / intensity_histogram_bins); needs use_clahe; doubles the
    # preprocessed storage
    keep_window_channel: bool = False

    @property
    def spacing_zyx(self) -> XYZ:
        return _zyx(self.spacing_xyz)

    @property
    def channels(self) -> int:
        """Channels of the preprocessed data: the network input (window + CLAHE) [, the window without CLAHE]."""
        return 2 if self.keep_window_channel else 1


@dataclass(frozen=True)
class NetworkConfig:
    """UNet backbone and the dense head.

    The UNet's topology (stages, strides, kernels) is planned by nnU-Net's experiment planner for the patch and
    written to the plans' ``architecture`` block (dynamic-network-architectures PlainConvUNet); these fields are
    the planner's inputs.
    """

    patch_size_xyz: IntXYZ = (96, 96, 64)  # voxels (x, y, z) at the target spacing
    base_num_features: int = 32  # channels of the first stage; doubled per stage
    max_num_features: int = 320  # cap on channels per stage
    embedding_dim: int = 32  # d: channels of the descriptor / condition maps
    # the descriptor's normalisation: "instance" (nnU-Net's InstanceNorm, statistics over the whole crop) or
    # "layer" (per-voxel LayerNorm over channels, as the authors' ConvNeXt descriptor; docs/method-notes.md 2.4).
    # The condition network always uses "layer" (nnscreener/networks/norms.py).
    descriptor_norm: str = "instance"

    @property
    def patch_size_zyx(self) -> IntXYZ:
        return _zyx(self.patch_size_xyz)


@dataclass(frozen=True)
class AugmentationConfig:
    """Per-view colour augmentations (docs/method-notes.md 2.2), applied to [0, 1] intensities."""

    p_blur_or_sharpen: float = 0.8
    sharpen_share: float = 0.5  # chance that blur-or-sharpen sharpens (else blurs)
    blur_sigma_mm: Tuple[float, float] = (0.0, 1.5)  # mm, in-plane Gaussian sigma range
    sharpen_alpha: Tuple[float, float] = (0.0, 2.0)
    p_noise: float = 0.8
    noise_std: Tuple[float, float] = (0.0, 0.1)
    p_brightness: float = 0.8
    brightness: Tuple[float, float] = (0.8, 1.2)  # multiplicative factor
    p_contrast: float = 0.8
    contrast: Tuple[float, float] = (0.8, 1.2)
    p_gamma: float = 0.8
    gamma: Tuple[float, float] = (0.8, 1.25)


@dataclass(frozen=True)
class MaskingConfig:
    """Random block masking (condition model only; docs/method-notes.md 2.3)."""

    probability: float = 0.9  # chance a view is masked at all
    ratio: float = 0.6  # share of blocks zeroed
    block_fraction: float = 0.25  # block edge as a fraction of each patch side


@dataclass(frozen=True)
class SSLConfig:
    """Dense self-supervised pretraining of the descriptor and condition models (paper 3.1-3.2, App. A)."""

    objective: Literal["vicreg", "infonce"] = "vicreg"
    n_pairs_per_image: int = 1024  # voxel positive pairs drawn in the overlap of two views
    batch_size: int = 8  # m images per step (two views each)
    num_iterations: int = 300_000
    warmup_iterations: int = 10_000
    learning_rate: float = 3e-4
    weight_decay: float = 1e-6
    adam_eps: float = 1e-3
    grad_clip: float = 1.0
    crop_spacing_factor: Tuple[float, float] = (1.0, 2.0)  # per-axis view spacing / target spacing
    masked_crop_spacing_factor: Tuple[float, float] = (1.0, 4.0)  # the same, for the condition model
    vicreg_expander_dims: Tuple[int, ...] = (8192, 8192, 8192)
    vicreg_weights: Tuple[float, float, float] = (25.0, 25.0, 1.0)  # invariance, variance, covariance
    vicreg_eps: float = 1e-4
    infonce_projector_dims: Tuple[int, ...] = (2048, 2048, 128)
    infonce_temperature: float = 0.1
    checkpoint_every: int = 1000  # iterations between checkpoint_latest writes
    log_every: int = 50  # iterations between log lines / progress points
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)


@dataclass(frozen=True)
class DensityConfig:
    """Density model over pooled descriptor maps (paper 3.3, App. B-C)."""

    condition: Literal["masking", "sincos", "none"] = "masking"
    density: Literal["flow", "gaussian"] = "flow"
    # result-folder variants of the trained descriptor / condition to use ("" = paths.ssl_variant(ssl.objective,
    # network.embedding_dim)); set by nnScreener_train --descriptor_variant / --condition_variant
    descriptor_variant: str = ""
    condition_variant: str = ""
    pool_stride_xyz: IntXYZ = (3, 3, 2)  # voxels, average-pooling kernel = stride (x, y, z)
    noise_std: float = 0.1  # Gaussian noise on descriptors and conditions, training only
    # beyond the paper: the preprocessed intensity smoothed at these Gaussian stds (mm; 0 = unsmoothed) is appended
    # to the descriptor, times intensity_scale (nnscreener/density/intensity.py); () = off (the paper)
    intensity_sigmas_mm: Tuple[float, ...] = ()
    # beyond the paper: a soft histogram of the preprocessed intensity in this many bins over [0, 1] (each voxel's
    # soft bin memberships sum to 1, so the pooled channels are the cell's intensity mixture), times
    # intensity_scale, appended the same way; 0 = off
    intensity_histogram_bins: int = 0
    # beyond the paper (on in the cpu preset): compute the intensity features of every stored channel, with
    # preprocessing.keep_window_channel both the CLAHE image (contrast to the surrounding tissue) and the HU window
    # (absolute density), instead of the last one's only (the window where kept); doubles the intensity channels
    # where the window is kept, changes nothing where it is not
    intensity_from_all_channels: bool = False
    intensity_scale: float = 100.0
    # beyond the paper: the learned condition read from K >= 2 passes with complementary block masks, each voxel's
    # from the pass that masks it (nnscreener/density/conditions.py LearnedCondition); 0 = unmasked (the paper)
    condition_mask_passes: int = 0
    flow_blocks: int = 64
    flow_hidden: int = 512
    gaussian_hidden: int = 128
    gaussian_min_log_var: float = -9.0  # variance floor (log sigma^2)
    sincos_dim: int = 32  # channels of the sin-cos positional condition
    batch_size: int = 4  # m patches per step
    num_iterations: int = 500_000
    warmup_iterations: int = 10_000
    learning_rate: float = 3e-4
    weight_decay: float = 1e-6
    adam_eps: float = 1e-3
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50

    @property
    def pool_stride_zyx(self) -> IntXYZ:
        return _zyx(self.pool_stride_xyz)


@dataclass(frozen=True)
class AutoencoderConfig:
    """The ``baseline_ae`` stage: a 3D convolutional autoencoder (the plans' UNet encoder and a decoder without
    skips; nnscreener/baselines/autoencoder.py). Score: the absolute reconstruction residual, Gaussian-smoothed."""

    loss: Literal["l1", "l2"] = "l1"  # reconstruction loss on the preprocessed [0, 1] patch
    latent_channels: int = 16  # channels of the spatial bottleneck (a 1x1x1 convolution after the encoder)
    score_sigma_mm: float = 3.0  # mm, std of the Gaussian that smooths |x - x_hat| into the score
    batch_size: int = 4  # patches per step
    num_iterations: int = 100_000
    warmup_iterations: int = 1_000
    learning_rate: float = 3e-4
    weight_decay: float = 1e-6
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50


@dataclass(frozen=True)
class SyntheticAnomalyConfig:
    """The ``baseline_synthetic`` stage (MOOD-Top1 style): synthetic anomalies blended into training patches
    (nnscreener/baselines/synthetic_anomalies.py), the plans' UNet regresses the per-voxel blending factor."""

    p_anomaly: float = 0.9  # chance that a training patch gets an anomaly at all
    alpha_range: Tuple[float, float] = (0.3, 1.0)  # blending factor of the anomalous content
    radius_mm_range: Tuple[float, float] = (4.0, 30.0)  # mm, half-axes of the ellipsoid / box region
    # relative chances of the anomaly kinds: foreign patch, intensity change, smooth deformation
    kind_weights: Tuple[float, float, float] = (0.5, 0.25, 0.25)
    intensity_shift_range: Tuple[float, float] = (0.05, 0.3)  # |shift| of [0, 1] intensities (sign random)
    intensity_gain_range: Tuple[float, float] = (0.7, 1.3)  # multiplicative contrast factor
    deformation_mm_range: Tuple[float, float] = (3.0, 12.0)  # mm, peak displacement of the smooth deformation
    target: Literal["blend", "visible"] = "blend"  # SYNTHETIC_TARGETS
    # "visible" target: alpha x min(1, |change| / visible_change), |change| in [0, 1] intensity units (0.02 ~ 26 HU
    # of the [-1000, 300] HU window before CLAHE)
    visible_change: float = 0.02
    batch_size: int = 4  # patches per step
    num_iterations: int = 35_000
    warmup_iterations: int = 1_000
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50


@dataclass(frozen=True)
class DraemConfig:
    """The ``baseline_draem`` stage (DRAEM, Zavrtanik et al. 2021, in 3D; nnscreener/baselines/draem.py): smooth-noise
    shaped anomalies, a reconstructive autoencoder and a discriminative UNet on (image, reconstruction)."""

    p_anomaly: float = 0.5  # chance that a training patch gets an anomaly (DRAEM: half the images)
    beta_range: Tuple[float, float] = (0.1, 1.0)  # DRAEM's beta: share of the image kept inside the anomaly
    noise_scale_mm_range: Tuple[float, float] = (10.0, 40.0)  # mm, cell size of the smooth noise that shapes it
    noise_threshold: float = 1.0  # the anomaly is where the noise (normalised to std 1) exceeds this
    source_weights: Tuple[float, float] = (0.5, 0.5)  # relative chances of the source: foreign patch, intensity
    intensity_shift_range: Tuple[float, float] = (0.05, 0.3)  # as baseline_synthetic's, for the intensity source
    intensity_gain_range: Tuple[float, float] = (0.7, 1.3)
    latent_channels: int = 16  # the reconstructive autoencoder's bottleneck channels
    ssim_window: int = 7  # voxels, edge of the SSIM window of the reconstruction loss
    focal_gamma: float = 2.0  # focal loss of the discriminative network
    score_window_mm: float = 9.0  # mm, edge of the mean filter that smooths the discriminative output
    batch_size: int = 4  # patches per step
    num_iterations: int = 35_000
    warmup_iterations: int = 1_000
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50


@dataclass(frozen=True)
class DistillConfig:
    """Distillation of a trained Screener model into the UNet of an nnU-Net plans file (nnscreener/distill/).

    The student is trained by regression (MSE, deep supervision as nnU-Net) on the teacher's anomaly map (and,
    with ``map+features``, its pooled descriptor), each channel normalised by the median and interquartile range
    of the training maps. The schedule fields mean what they mean in ``ssl`` / ``density``.
    """

    targets: Literal["map", "map+features"] = "map"
    teacher_plans: str = ""  # the teacher's plans name ("" = nnScreenerPlans); set by nnScreener_train --teacher_plans
    feature_weight: float = 1.0  # weight of the feature channels' MSE (mean over them) beside the map's MSE
    batch_size: int = 2  # patches of the student plans' patch size per step
    num_iterations: int = 100_000
    warmup_iterations: int = 2_000
    learning_rate: float = 3e-4
    weight_decay: float = 1e-6
    adam_eps: float = 1e-3
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    log_every: int = 50


@dataclass(frozen=True)
class InferenceConfig:
    step_size: float = 0.5  # sliding-window step as a fraction of the patch
    # "gaussian": nnU-Net's importance map, as the authors' code (MONAI mode="gaussian"); "uniform": the paper's
    # plain averaging. Gaussian measured better at the cpu preset (benchmarks/RESULTS.md, configuration gauss_blend)
    blending: Literal["uniform", "gaussian"] = "gaussian"
    batch_size: int = 2  # patches per forward
    # "nll": -log q(y | c), the paper's score; "latent": 0.5 ||z||^2 of the whitened descriptor, the NLL without
    # the density's log-volume term, which is the same chi-square(D)/2 in every region for normal tissue
    # (docs/method-notes.md 3.6). Read at inference; the density is trained the same way for both.
    score: Literal["nll", "latent"] = "nll"


@dataclass(frozen=True)
class ScreenerConfig:
    preset: str = "default"
    seed: int = 0  # seeds python random, numpy, torch and the loader workers of a training run (--seed N)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    baseline_ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    baseline_synthetic: SyntheticAnomalyConfig = field(default_factory=SyntheticAnomalyConfig)
    baseline_draem: DraemConfig = field(default_factory=DraemConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScreenerConfig":
        """Reads a stored config: a plans' ``"nnscreener"`` block, a checkpoint's ``screener_config``, a
        ``config.json``.

        A stored config is complete when written, so a field missing from ``d`` was added to nnScreener after ``d``
        was written. It takes the field's class default, never the current value of the preset ``d`` names: the
        rule for a new field is that its class default reproduces the behaviour from before it existed, while a
        preset may choose another value for new plans (the cpu preset's ``density.intensity_histogram_bins=8`` must
        not give a density checkpoint trained before the histogram 8 more input channels).
        """
        if d.get("preset", "default") not in PRESETS:
            raise ScreenerError(f"unknown preset {d.get('preset')!r} in a stored config; known: {sorted(PRESETS)}")
        return merge(cls(), d)


def default_config() -> ScreenerConfig:
    """The paper's settings (GPU scale)."""
    return ScreenerConfig()


def cpu_config() -> ScreenerConfig:
    """A small preset for demos, tests and CI on a few CPU cores.

    Coarser spacing, smaller patch and network, narrow SSL heads, short schedules. Chosen by measurement
    (see benchmarks/RESULTS.md).
    """
    return ScreenerConfig(
        preset="cpu",
        # the HU window kept beside the networks' CLAHE image for the histogram (with intensity_from_all_channels
        # below): measured 2026-12-07 (benchmarks/RESULTS.md, window_hist_both): pooled AUROC +0.011 on the demo's
        # dataset, +0.075 on a second one, the other pooled metrics up on both (two seeds each)
        preprocessing=PreprocessingConfig(spacing_xyz=(3.0, 3.0, 4.5), keep_window_channel=True),
        network=NetworkConfig(
            patch_size_xyz=(48, 48, 32),
            base_num_features=8,
            max_num_features=64,
            embedding_dim=32,
        ),
        ssl=SSLConfig(
            n_pairs_per_image=1024,
            batch_size=4,
            num_iterations=300,
            warmup_iterations=30,
            learning_rate=1e-3,
            vicreg_expander_dims=(512, 512, 512),
            infonce_projector_dims=(256, 256, 128),
            checkpoint_every=50,
            log_every=10,
            crop_spacing_factor=(1.0, 1.5),
            masked_crop_spacing_factor=(1.0, 2.0),
        ),
        density=DensityConfig(
            pool_stride_xyz=(3, 3, 2),
            # measured 2026-12-06 (benchmarks/RESULTS.md): +0.04 pooled AUROC on two seeds, +0.09 on a second dataset
            intensity_histogram_bins=8,
            # measured 2026-12-07 (benchmarks/RESULTS.md, window_hist_both): the CLAHE image's histogram beside the
            # window's, the best pooled AUROC on both synthetic datasets
            intensity_from_all_channels=True,
            flow_blocks=8,
            flow_hidden=64,
            gaussian_hidden=64,
            batch_size=4,
            num_iterations=300,
            warmup_iterations=30,
            learning_rate=1e-3,
            checkpoint_every=50,
            log_every=10,
        ),
        # the baselines at the demo's budget: as many optimizer steps as the three Screener stages together
        baseline_ae=AutoencoderConfig(num_iterations=600, warmup_iterations=30, learning_rate=1e-3,
                                      checkpoint_every=50, log_every=10),
        baseline_synthetic=SyntheticAnomalyConfig(num_iterations=600, warmup_iterations=30, learning_rate=1e-3,
                                                  checkpoint_every=50, log_every=10),
        baseline_draem=DraemConfig(num_iterations=600, warmup_iterations=30, learning_rate=1e-3, checkpoint_every=50,
                                   log_every=10),
        distill=DistillConfig(batch_size=2, num_iterations=300, warmup_iterations=30, learning_rate=1e-3,
                              checkpoint_every=50, log_every=10),
        inference=InferenceConfig(step_size=0.5, blending="gaussian", batch_size=4),
    )


PRESETS = {"default": default_config, "cpu": cpu_config}


def get_preset(name: str) -> ScreenerConfig:
    if name not in PRESETS:
        raise ScreenerError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def _coerce(value: Any, current: Any) -> Any:
    """Casts a JSON / CLI value to the type of the field it replaces (tuples stay tuples)."""
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        items = list(value)
        if current and all(isinstance(c, tuple) for c in current):
            return tuple(tuple(int(x) for x in item) for item in items)
        kind = type(current[0]) if current else float
        return tuple(kind(v) for v in items)
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ScreenerError(f"expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


def merge(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """Returns ``cfg`` with the values of the nested dict ``overrides`` replaced (unknown keys raise)."""
    if not overrides:
        return cfg
    known = {f.name: f for f in fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        if key not in known:
            raise ScreenerError(f"unknown config key {key!r} in {type(cfg).__name__}; known: {sorted(known)}")
        current = getattr(cfg, key)
        if is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ScreenerError(f"config section {key!r} needs a mapping, got {value!r}")
            changes[key] = merge(current, value)
        else:
            try:
                changes[key] = _coerce(value, current)
            except (TypeError, ValueError) as e:
                raise ScreenerError(f"bad value {value!r} for config key {key!r}: {e}") from e
    return replace(cfg, **changes)


def parse_set_overrides(items: list[str] | None) -> Dict[str, Any]:
    """Turns ``["ssl.learning_rate=1e-3", "network.embedding_dim=64"]`` into a nested dict."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ScreenerError(f"--set expects section.field=value, got {item!r}")
        path, value = item.split("=", 1)
        node = out
        parts = path.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value.strip()
    return out


def validate(cfg: ScreenerConfig) -> ScreenerConfig:
    """Checks the choices that come from registries; raises ScreenerError listing the valid ones."""
    checks = (
        (cfg.ssl.objective, OBJECTIVES, "ssl.objective"),
        (cfg.density.condition, CONDITIONS, "density.condition"),
        (cfg.density.density, DENSITIES, "density.density"),
        (cfg.inference.blending, BLENDINGS, "inference.blending"),
        (cfg.inference.score, SCORES, "inference.score"),
        (cfg.network.descriptor_norm, DESCRIPTOR_NORMS, "network.descriptor_norm"),
        (cfg.baseline_ae.loss, RECONSTRUCTION_LOSSES, "baseline_ae.loss"),
        (cfg.baseline_synthetic.target, SYNTHETIC_TARGETS, "baseline_synthetic.target"),
        (cfg.distill.targets, DISTILL_TARGETS, "distill.targets"),
    )
    for value, allowed, name in checks:
        if value not in allowed:
            raise ScreenerError(f"{name}={value!r} is not one of {list(allowed)}")
    if not 0 < cfg.inference.step_size <= 1:
        raise ScreenerError(f"inference.step_size must lie in (0, 1], got {cfg.inference.step_size}")
    if cfg.density.intensity_histogram_bins == 1 or cfg.density.intensity_histogram_bins < 0:
        raise ScreenerError(f"density.intensity_histogram_bins must be 0 (off) or at least 2, got "
                            f"{cfg.density.intensity_histogram_bins}")
    if cfg.preprocessing.keep_window_channel and not cfg.preprocessing.use_clahe:
        raise ScreenerError("preprocessing.keep_window_channel=true needs preprocessing.use_clahe=true (without CLAHE "
                            "the network input is the window already): set preprocessing.keep_window_channel=false "
                            "with preprocessing.use_clahe=false")
    _validate_synthetic_anomalies(cfg.baseline_synthetic)
    _validate_draem_anomalies(cfg.baseline_draem)
    return cfg


def _validate_synthetic_anomalies(cfg: SyntheticAnomalyConfig) -> None:
    """The anomaly generator's ranges and chances must make sense; ScreenerError naming the field otherwise."""
    weights = cfg.kind_weights
    problems = {
        "p_anomaly": not 0 <= cfg.p_anomaly <= 1,
        "alpha_range": not 0 < cfg.alpha_range[0] <= cfg.alpha_range[1] <= 1,
        "kind_weights": len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0,
        "radius_mm_range": not 0 < cfg.radius_mm_range[0] <= cfg.radius_mm_range[1],
        "visible_change": not cfg.visible_change > 0,
    }
    bad = [name for name, wrong in problems.items() if wrong]
    if bad:
        raise ScreenerError(f"baseline_synthetic.{bad[0]}={getattr(cfg, bad[0])!r} is invalid: p_anomaly lies in "
                            f"[0, 1], alpha_range in (0, 1] (low <= high), kind_weights are 3 non-negative chances "
                            f"(foreign, intensity, deformation) not all 0, radius_mm_range > 0 (low <= high), "
                            f"visible_change > 0")


def _validate_draem_anomalies(cfg: DraemConfig) -> None:
    """DRAEM's chances and ranges must make sense; ScreenerError naming the field otherwise."""
    weights = cfg.source_weights
    problems = {
        "p_anomaly": not 0 <= cfg.p_anomaly <= 1,
        "beta_range": not 0 <= cfg.beta_range[0] <= cfg.beta_range[1] <= 1 or cfg.beta_range[0] >= 1,
        "source_weights": len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0,
        "noise_scale_mm_range": not 0 < cfg.noise_scale_mm_range[0] <= cfg.noise_scale_mm_range[1],
    }
    bad = [name for name, wrong in problems.items() if wrong]
    if bad:
        raise ScreenerError(f"baseline_draem.{bad[0]}={getattr(cfg, bad[0])!r} is invalid: p_anomaly lies in [0, 1], "
                            f"beta_range in [0, 1] (low < 1, low <= high), source_weights are 2 non-negative chances "
                            f"(foreign, intensity) not all 0, noise_scale_mm_range > 0 (low <= high)")

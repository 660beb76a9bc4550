"""The configurations of the quality campaign (``benchmarks/quality.py --parts configs``): adding one is one entry
of :data:`CONFIGS`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple

from nnscreener.config import get_preset

BASE_PRESET = "cpu"


def preset_fingerprint() -> str:
    """A short hash of today's :data:`BASE_PRESET` settings. Every trained row of a campaign records the one it was
    measured at, so the tables can tell rows of an older preset (whose ``default`` was another model, and whose
    configurations differ from it in more than they set) from today's."""
    settings = json.dumps(get_preset(BASE_PRESET).to_dict(), sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ConfigSpec:
    """A configuration: planning overrides (non-empty: own plans ``nnScreenerPlans_cpu_<name>``, as spacing, CLAHE
    and network widths are fixed at planning), extra ``nnScreener_train`` arguments (``--set SECTION.FIELD=VALUE``,
    flags) for all three stages, and per stage (``{"density": ("--set", "density.learning_rate=3e-4")}``), and
    extra ``nnScreener_predict`` arguments."""

    description: str
    plan_set: Tuple[str, ...] = ()
    train_args: Tuple[str, ...] = ()
    stage_args: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    ssl_of: str = ""  # a density-only configuration: reuses that configuration's plans, descriptor and condition
    condition_of: str = ""  # a descriptor configuration: trains its own descriptor, reuses that one's condition
    models_of: str = ""  # a prediction-only configuration: reuses all three trained models of that configuration
    predict_args: Tuple[str, ...] = ()  # extra ``nnScreener_predict`` arguments (``--score latent``)


_WIDTH = get_preset(BASE_PRESET).network.base_num_features
CONFIGS: Dict[str, ConfigSpec] = {  # adding a configuration is one entry here
    "default": ConfigSpec("cpu preset as planned: VICReg, masking condition + flow density"),
    "infonce": ConfigSpec("InfoNCE objective instead of VICReg", train_args=("--objective", "infonce")),
    "wide": ConfigSpec(f"wider UNet: network.base_num_features={2 * _WIDTH} (preset {_WIDTH})",
                       plan_set=(f"network.base_num_features={2 * _WIDTH}",)),
    "desc_layernorm": ConfigSpec("descriptor with a per-voxel LayerNorm over channels (network.descriptor_norm=layer) "
                                 "instead of InstanceNorm over the crop",
                                 plan_set=("network.descriptor_norm=layer",)),
    "no_clahe": ConfigSpec("no CLAHE (preprocessing.use_clahe=false; the network input is then the window, so no "
                           "window is kept beside it)",
                           plan_set=("preprocessing.use_clahe=false", "preprocessing.keep_window_channel=false")),
    "window_hist": ConfigSpec("networks on the CLAHE image, the intensity histogram on the HU window without CLAHE "
                              "only (preprocessing.keep_window_channel=true, density.intensity_from_all_channels="
                              "false)", plan_set=("preprocessing.keep_window_channel=true",),
                              stage_args={"density": ("--set", "density.intensity_from_all_channels=false")}),
    "clahe_hist": ConfigSpec("the cpu preset before 2026-12-07: the intensity histogram on the CLAHE image alone, "
                             "the networks' input (preprocessing.keep_window_channel=false)",
                             plan_set=("preprocessing.keep_window_channel=false",)),
    "window_hist_both": ConfigSpec("window_hist's descriptor and condition; the histogram of both stored channels, the "
                                   "CLAHE image and the HU window (density.intensity_from_all_channels=true); the "
                                   "cpu preset's since 2026-12-07",
                                   stage_args={"density": ("--set", "density.intensity_from_all_channels=true")},
                                   ssl_of="window_hist"),
    "window_hist_both_pool221": ConfigSpec("window_hist_both (the cpu preset's since 2026-12-07) with the density on "
                                           "2 x 2 x 1 pooled voxels (6 x 6 x 4.5 mm) instead of 3 x 3 x 2 (9 mm); "
                                           "what pool_221 is on the default models, for work dirs planned before",
                                           stage_args={"density": ("--set", "density.intensity_from_all_channels=true",
                                                                   "--set", "density.pool_stride_xyz=2,2,1")},
                                           ssl_of="window_hist"),
    "lr_3e-4": ConfigSpec("learning rate 3e-4 (preset 1e-3) for all stages",
                          train_args=("--set", "ssl.learning_rate=3e-4", "--set", "density.learning_rate=3e-4")),
    "ssl_lr_3e-3": ConfigSpec("SSL learning rate 3e-3 (preset 1e-3) for descriptor and condition; density as preset",
                              train_args=("--set", "ssl.learning_rate=3e-3")),
    "eps_1e-8": ConfigSpec("AdamW eps 1e-8 (preset 1e-3, the authors') for all stages",
                           train_args=("--set", "ssl.adam_eps=1e-8", "--set", "density.adam_eps=1e-8")),
    "pool_221": ConfigSpec("density on 2 x 2 x 1 pooled voxels (6 x 6 x 4.5 mm) instead of 3 x 3 x 2 (9 mm)",
                           stage_args={"density": ("--set", "density.pool_stride_xyz=2,2,1")}, ssl_of="default"),
    "pool_332": ConfigSpec("density on 3 x 3 x 2 pooled voxels (9 x 9 x 9 mm at the cpu spacing)",
                           stage_args={"density": ("--set", "density.pool_stride_xyz=3,3,2")}, ssl_of="default"),
    "intensity": ConfigSpec("smoothed intensities (sigma 0 and 6 mm) appended to the descriptor",
                            stage_args={"density": ("--set", "density.intensity_sigmas_mm=0,6")}, ssl_of="default"),
    "intensity_hist8": ConfigSpec("a soft histogram of the intensity in 8 bins appended to the descriptor (pooled: the "
                                  "cell's intensity mixture); the cpu preset's since 2026-12-06",
                                  stage_args={"density": ("--set", "density.intensity_histogram_bins=8")},
                                  ssl_of="default"),
    "no_hist": ConfigSpec("the cpu preset before 2026-12-06: no intensity histogram appended to the descriptor",
                          stage_args={"density": ("--set", "density.intensity_histogram_bins=0")}, ssl_of="default"),
    "intensity_mask_passes2": ConfigSpec(
        "intensity channels (sigma 0 and 6 mm) and the condition read from 2 complementary masked passes",
        stage_args={"density": ("--set", "density.intensity_sigmas_mm=0,6",
                                "--set", "density.condition_mask_passes=2")},
        ssl_of="default"),
    "gauss_blend": ConfigSpec("Gaussian sliding-window blending (inference.blending=gaussian; the authors' code) "
                              "instead of uniform averaging (the paper's text)",
                              stage_args={"density": ("--set", "inference.blending=gaussian")}, ssl_of="default"),
    "desc_layernorm_gauss": ConfigSpec("desc_layernorm's descriptor and condition, Gaussian blending",
                                       stage_args={"density": ("--set", "inference.blending=gaussian")},
                                       ssl_of="desc_layernorm"),
    "uniform_blend": ConfigSpec("uniform sliding-window blending (the paper's text; nnScreener_predict --blending "
                                "uniform) on the default models (Gaussian, the authors' code)", models_of="default",
                                predict_args=("--blending", "uniform")),
    "latent_score": ConfigSpec("score 0.5 ||z||^2 instead of -log q (no log-volume term; nnScreener_predict --score "
                               "latent) on the default models", models_of="default",
                               predict_args=("--score", "latent")),
    "desc_no_intensity_aug": ConfigSpec(
        "descriptor trained without the brightness, contrast and gamma augmentations (blur/sharpen and noise kept; "
        "beyond the paper); the default's condition, the preset's density",
        stage_args={"descriptor": ("--set", "ssl.augmentation.p_brightness=0", "--set", "ssl.augmentation.p_contrast=0",
                                   "--set", "ssl.augmentation.p_gamma=0")},
        condition_of="default"),
    "desc_no_blur": ConfigSpec(
        "descriptor trained without the blur-or-sharpen augmentation (beyond the paper); the default's condition, the "
        "preset's density", stage_args={"descriptor": ("--set", "ssl.augmentation.p_blur_or_sharpen=0")},
        condition_of="default"),
    "mask_passes2": ConfigSpec("condition read from 2 complementary masked passes (training and inference)",
                               stage_args={"density": ("--set", "density.condition_mask_passes=2")},
                               ssl_of="default"),
}

"""Screener's intensity normalization as an nnU-Net ``ImageNormalization``: clip HU to a fixed window and rescale
linearly to [0, 1] (paper App. D). Unlike nnU-Net's ``CTNormalization`` it does not depend on the dataset's
intensity fingerprint, so every dataset and every scan gets the same mapping.

nnU-Net resolves normalization schemes by name inside its own package only, so
:class:`nnscreener.planning.preprocessor.ScreenerPreprocessor` maps the scheme names in
:data:`NORMALIZATION_SCHEMES` itself.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Type

import numpy as np
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization

from nnscreener.errors import ScreenerError

DEFAULT_CLIP_HU = (-1000.0, 300.0)


class ScreenerCTNormalization(ImageNormalization):
    """Clips to ``clip_hu`` = (low, high) HU and maps low -> 0, high -> 1.

    Args:
        use_mask_for_norm: ignored (the mapping is global); kept for nnU-Net's interface.
        intensityproperties: the fingerprint's intensity statistics; ignored, kept for nnU-Net's interface.
        target_dtype: output dtype.
        clip_hu: the HU window (low, high), low < high.
    """

    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = False

    def __init__(self, use_mask_for_norm: Optional[bool] = None, intensityproperties: Optional[dict] = None,
                 target_dtype: Type[np.number] = np.float32, clip_hu: Sequence[float] = DEFAULT_CLIP_HU):
        super().__init__(use_mask_for_norm, intensityproperties if intensityproperties is not None else {},
                         target_dtype)
        low, high = (float(v) for v in clip_hu)
        if not high > low:
            raise ScreenerError(f"preprocessing.clip_hu must be (low, high) with low < high, got {tuple(clip_hu)}")
        self.clip_hu = (low, high)

    def run(self, image: np.ndarray, seg: Optional[np.ndarray] = None) -> np.ndarray:
        """Args: image: array in HU (any shape). Returns: the same shape in [0, 1], ``target_dtype``; a float
        input of that dtype is modified in place."""
        low, high = self.clip_hu
        image = image.astype(self.target_dtype, copy=False)
        np.clip(image, low, high, out=image)
        image -= low
        image /= high - low
        np.clip(image, 0.0, 1.0, out=image)  # guard against rounding just outside [0, 1]
        return image


NORMALIZATION_SCHEMES: Dict[str, Type[ScreenerCTNormalization]] = {
    ScreenerCTNormalization.__name__: ScreenerCTNormalization,
}

"""Screener preprocessing on nnU-Net's preprocessor: one code path for training data and for prediction.

Per case, in order (paper App. D; docs/method-notes.md section 1):

1. read the CT with the plans' nnU-Net reader (array (1, z, y, x) in HU) and check it (3D, one channel, no NaN);
2. crop to the dense foreground (:mod:`nnscreener.planning.cropping`) in the original image;
3. resample to the plans' spacing with the plans' nnU-Net resampling function (cubic, HU);
4. body mask at the target spacing (:func:`nnscreener.planning.body_mask.body_mask_from_hu`);
5. clip to ``preprocessing.clip_hu`` and rescale to [0, 1] (:mod:`nnscreener.planning.normalization`);
6. 3D CLAHE of the resampled volume (:mod:`nnscreener.planning.clahe`), unless ``preprocessing.use_clahe`` is off;
   with ``preprocessing.keep_window_channel`` the window of step 5 is kept as a second channel (the density's
   intensity features read it; the networks read channel 0 only).

The result keeps nnU-Net's properties (``spacing``, ``sitk_stuff``, ``shape_before_cropping``,
``bbox_used_for_cropping``, ``shape_after_cropping_and_before_resampling``, ``class_locations`` for training
cases) with nnU-Net's meaning, so nnU-Net's export functions map outputs back to the input's geometry. The stored
"segmentation" is the body mask (label 1 inside the body). Volumes smaller than a patch are kept unpadded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnscreener.config import PreprocessingConfig
from nnscreener.errors import ScreenerError
from nnscreener.io.images import check_complete, check_ct_intensities, reader_reason, stored_pixel_type
from nnscreener.planning.body_mask import body_mask_from_hu
from nnscreener.planning.clahe import clahe_3d
from nnscreener.planning.cropping import crop_to_bbox, dense_foreground_bbox
from nnscreener.planning.normalization import NORMALIZATION_SCHEMES

BODY_LABEL = 1  # value of the body in the stored segmentation; 0 is outside
MIN_EDGE_VOXELS = 8  # smallest accepted size of a preprocessed volume along any axis
CT_SPACING_RANGE_MM = (0.1, 12.0)  # accepted voxel spacing of input scans (clinical CT: ~0.3 .. 10 mm)
MAX_PREPROCESSED_VOXELS = 2 ** 28  # largest resampled volume (1 GiB as float32; a 1.5 mm whole body is ~1e8)


@dataclass
class PreprocessedCase:
    """One preprocessed CT.

    Attributes:
        data: (C, z, y, x) float32 in [0, 1] at the plans' spacing; channel 0 the networks' input, channel 1 (with
            ``preprocessing.keep_window_channel``) the HU window without CLAHE.
        body_mask: (z, y, x) bool, True inside the body.
        properties: nnU-Net's properties dict (see the module docstring).
    """

    data: np.ndarray
    body_mask: np.ndarray
    properties: Dict[str, Any]


def check_ct_channels(dataset_json: Dict[str, Any], source: str = "dataset.json") -> None:
    """Raises ScreenerError unless ``channel_names`` declares exactly one channel, "CT"."""
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or len(channels) != 1 or str(next(iter(channels.values()))).upper() != "CT":
        raise ScreenerError(
            f"{source}: channel_names must declare a single CT channel, {{\"0\": \"CT\"}}; got {channels!r}. "
            f"nnScreener works on single-channel CT in Hounsfield units."
        )


def read_ct_image(image_files: Sequence[str], reader_writer,
                  allow_non_ct: bool = False) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Reads one CT with an nnU-Net reader and checks it.

    Args:
        image_files: the case's image files; exactly one (the CT channel).
        reader_writer: an nnU-Net ``BaseReaderWriter`` instance (e.g. ``SimpleITKIO()``).
        allow_non_ct: skip the check that the intensities look like CT in HU
            (:func:`nnscreener.io.images.check_ct_intensities`).

    Returns:
        (1, z, y, x) float32 array in HU and nnU-Net's image properties (``spacing`` in (z, y, x) mm, ...).

    Raises:
        ScreenerError naming the file: missing, truncated, unreadable, not a single-channel 3D volume, holding
        NaN/inf, or (unless ``allow_non_ct``) clearly not a CT in Hounsfield units.
    """
    image_files = [str(f) for f in image_files]
    if len(image_files) != 1:
        raise ScreenerError(f"expected one CT image per case, got {len(image_files)} files: {image_files}")
    path = image_files[0]
    if not os.path.isfile(path):
        raise ScreenerError(f"missing image file {path}")
    check_complete(path)
    try:
        data, properties = reader_writer.read_images(image_files)
    except Exception as e:  # readers raise RuntimeError, OSError, ValueError, ... for broken files
        raise ScreenerError(f"cannot read image {path}: {reader_reason(e)}") from None
    sitk_spacing = properties.get("sitk_stuff", {}).get("spacing")
    if data.ndim != 4 or data.shape[0] != 1 or (sitk_spacing is not None and len(sitk_spacing) != 3) \
            or min(data.shape[1:]) < 2:
        raise ScreenerError(f"{path} is not a single-channel 3D volume (array shape {data.shape}, "
                            f"spacing {sitk_spacing if sitk_spacing is not None else properties.get('spacing')})")
    if not np.isfinite(np.sum(data, dtype=np.float64)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ScreenerError(f"{path} contains {bad} NaN or infinite voxels; fix or drop this image")
    if not allow_non_ct:
        check_ct_intensities(data, path, stored_pixel_type(path))
    return data.astype(np.float32, copy=False), properties


def check_spacing(spacing: Sequence[float]) -> None:
    """Raises ScreenerError when a voxel spacing (mm) lies outside :data:`CT_SPACING_RANGE_MM` (a broken header or
    not a CT; resampling it would take minutes or tens of GiB)."""
    low, high = CT_SPACING_RANGE_MM
    if not all(np.isfinite(s) and low <= s <= high for s in spacing):
        raise ScreenerError(f"voxel spacing {tuple(spacing)} mm lies outside CT's range {low:g}..{high:g} mm per "
                            f"axis; check the image header")


def check_resampled_size(shape: Sequence[int], spacing: Sequence[float], new_shape: Sequence[int],
                         target_spacing: Sequence[float]) -> None:
    """Raises ScreenerError, before any allocation, when resampling would exceed :data:`MAX_PREPROCESSED_VOXELS`."""
    n_voxels = int(np.prod([int(s) for s in new_shape], dtype=object))
    if n_voxels > MAX_PREPROCESSED_VOXELS:
        raise ScreenerError(
            f"the crop {tuple(int(s) for s in shape)} at spacing {tuple(spacing)} mm would become "
            f"{tuple(int(s) for s in new_shape)} = {n_voxels:,} voxels at {tuple(target_spacing)} mm, more than the "
            f"limit of {MAX_PREPROCESSED_VOXELS:,} ({MAX_PREPROCESSED_VOXELS * 4 / 2 ** 30:g} GiB as float32)")


class ScreenerPreprocessor(DefaultPreprocessor):
    """nnU-Net preprocessor with Screener's steps (see the module docstring).

    ``run`` (inherited) preprocesses a whole dataset into nnU-Net's blosc2 format in spawn workers;
    ``run_case`` / ``run_case_npy`` handle one case. The label file nnU-Net passes for training cases is not read:
    the body mask is recomputed at the target spacing, the same way for training and prediction.

    Args:
        verbose: print per-case details (nnU-Net's flag).
        config: Screener preprocessing settings; None reads them from the plans' ``nnscreener`` block.
        allow_non_ct: read images whose intensities do not look like CT in HU (see :func:`read_ct_image`).
    """

    def __init__(self, verbose: bool = False, config: Optional[PreprocessingConfig] = None,
                 allow_non_ct: bool = False):
        super().__init__(verbose=verbose)
        self.config = config
        self.allow_non_ct = allow_non_ct

    def _resolve_config(self, plans_manager: PlansManager) -> PreprocessingConfig:
        if self.config is not None:
            return self.config
        from nnscreener.plans import config_from_plans

        return config_from_plans(plans_manager.plans, f"plans {plans_manager.plans_name!r}").preprocessing

    def run_case(self, image_files: List[str], seg_file: Union[str, None], plans_manager: PlansManager,
                 configuration_manager: ConfigurationManager, dataset_json: Union[dict, str]):
        """Reads and preprocesses one case.

        Args:
            image_files: the case's single CT file.
            seg_file: None at prediction; for a training case any label path (not read), which makes this
                sample ``class_locations`` of the body as nnU-Net does for labelled cases.

        Returns:
            data (1, z, y, x) float32 in [0, 1], seg (1, z, y, x) int16 body mask, properties.

        Raises:
            ScreenerError naming the image for bad input (see :func:`read_ct_image`) or an empty/tiny crop.
        """
        data, properties = read_ct_image(image_files, plans_manager.image_reader_writer_class(), self.allow_non_ct)
        try:
            data, mask, properties = self._preprocess(data, properties, plans_manager, configuration_manager)
        except ScreenerError as e:
            raise ScreenerError(f"{image_files[0]}: {e}") from None
        if seg_file is not None:
            properties["class_locations"] = self._sample_foreground_locations(mask, [BODY_LABEL],
                                                                                verbose=self.verbose)
        return data, mask, properties

    def run_case_npy(self, data: np.ndarray, seg: Union[np.ndarray, None], properties: dict,
                     plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                     dataset_json: Union[dict, str]):
        """nnU-Net's in-memory entry point: ``data`` (1, z, y, x) in HU plus the reader's properties.

        ``seg`` is not used except as nnU-Net's signal that this is a training case (then ``class_locations``
        of the body are sampled). Returns data, the (1, z, y, x) int16 body mask, and properties.
        """
        data, mask, properties = self._preprocess(np.asarray(data, dtype=np.float32), properties, plans_manager,
                                                  configuration_manager)
        if seg is not None:
            properties["class_locations"] = self._sample_foreground_locations(mask, [BODY_LABEL],
                                                                                verbose=self.verbose)
        return data, mask, properties

    def _preprocess(self, data: np.ndarray, properties: dict, plans_manager: PlansManager,
                    configuration_manager: ConfigurationManager) -> Tuple[np.ndarray, np.ndarray, dict]:
        """Crop, resample, body mask, clip/rescale, CLAHE. ``data`` (1, z, y, x) float32 HU is not modified.

        Returns data (``preprocessing.channels``, z, y, x) float32 in [0, 1], the (1, z, y, x) int16 body mask and
        the properties.
        """
        cfg = self._resolve_config(plans_manager)
        if data.shape[0] != 1:
            raise ScreenerError(f"expected one CT channel, got {data.shape[0]} channels")
        transpose = plans_manager.transpose_forward
        data = data.transpose([0, *[a + 1 for a in transpose]])
        spacing = [float(properties["spacing"][a]) for a in transpose]
        check_spacing(spacing)
        properties["shape_before_cropping"] = data.shape[1:]

        bbox = dense_foreground_bbox(data[0], spacing, cfg.body_threshold_hu, cfg.body_block_mm)
        if bbox is None:
            raise ScreenerError(
                f"no dense foreground: no {cfg.body_block_mm:g} mm block has all voxels >= "
                f"{cfg.body_threshold_hu:g} HU. Is this a CT in Hounsfield units?")
        data = crop_to_bbox(data, bbox)
        properties["bbox_used_for_cropping"] = bbox
        properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]

        target_spacing = [float(s) for s in configuration_manager.spacing]
        new_shape = compute_new_shape(data.shape[1:], spacing, target_spacing)
        if min(new_shape) < MIN_EDGE_VOXELS:
            raise ScreenerError(
                f"the dense-foreground crop {tuple(int(s) for s in data.shape[1:])} at spacing {tuple(spacing)} "
                f"mm (z, y, x) becomes {tuple(int(s) for s in new_shape)} voxels at {tuple(target_spacing)} mm; "
                f"at least {MIN_EDGE_VOXELS} voxels per axis are needed")
        check_resampled_size(data.shape[1:], spacing, new_shape, target_spacing)
        resampled = configuration_manager.resampling_fn_data(data, new_shape, spacing, target_spacing)
        if np.shares_memory(resampled, data):  # nothing to resample: do not normalize the caller's array in place
            resampled = resampled.copy()
        data = resampled.astype(np.float32, copy=False)

        mask = body_mask_from_hu(data[0], cfg.body_threshold_hu)
        data = self._normalize(data, mask[None], configuration_manager,
                               plans_manager.foreground_intensity_properties_per_channel, clip_hu=cfg.clip_hu)
        if cfg.use_clahe:
            equalised = clahe_3d(data[0], clip_limit=cfg.clahe_clip_limit, nbins=cfg.clahe_nbins)
            data = np.stack([equalised, data[0]]) if cfg.keep_window_channel else equalised[None]
        if self.verbose:
            print(f"crop {bbox}, shape {tuple(properties['shape_after_cropping_and_before_resampling'])} -> "
                  f"{tuple(data.shape[1:])}, spacing {spacing} -> {target_spacing}")
        return data, mask[None].astype(np.int16) * BODY_LABEL, properties

    def _normalize(self, data: np.ndarray, seg: np.ndarray, configuration_manager: ConfigurationManager,
                   foreground_intensity_properties_per_channel: dict,
                   clip_hu: Optional[Sequence[float]] = None) -> np.ndarray:
        """Applies the configuration's normalization per channel, resolving Screener's scheme names here
        (nnU-Net's own lookup only searches its package); other schemes go to nnU-Net.

        Args:
            data: (c, z, y, x) float32, normalized in place.
            clip_hu: HU window for :class:`ScreenerCTNormalization`; None takes it from this preprocessor's config
                (or the default window).
        """
        schemes = configuration_manager.normalization_schemes
        if not any(s in NORMALIZATION_SCHEMES for s in schemes):
            return super()._normalize(data, seg, configuration_manager, foreground_intensity_properties_per_channel)
        unknown = [s for s in schemes if s not in NORMALIZATION_SCHEMES]
        if unknown:
            raise ScreenerError(f"cannot mix nnScreener and nnU-Net normalization schemes: {list(schemes)}")
        if clip_hu is None:
            clip_hu = (self.config or PreprocessingConfig()).clip_hu
        for c, scheme in enumerate(schemes):
            normalizer = NORMALIZATION_SCHEMES[scheme](
                use_mask_for_norm=bool(configuration_manager.use_mask_for_norm[c]),
                intensityproperties=dict(foreground_intensity_properties_per_channel.get(str(c), {})),
                clip_hu=clip_hu,
            )
            data[c] = normalizer.run(data[c], seg[0] if seg is not None else None)
        return data


def preprocess_case(image_files: Sequence[str], plans, allow_non_ct: bool = False) -> PreprocessedCase:
    """Preprocesses one CT the way its training data was preprocessed (used by prediction).

    Args:
        image_files: the case's single CT file (e.g. ``["case_0000.nii.gz"]``).
        plans: a :class:`nnscreener.plans.ScreenerPlans` (its resolved config decides the settings).
        allow_non_ct: skip the check that the intensities look like CT in HU.

    Returns:
        :class:`PreprocessedCase` with data (C, z, y, x) float32 in [0, 1] (C = ``preprocessing.channels``: the
        network input [, the window without CLAHE]), body_mask (z, y, x) bool, and
        nnU-Net's properties (no ``class_locations``).

    Raises:
        ScreenerError naming the file: missing / truncated / unreadable / non-3D / NaN / non-CT image, a plans
        dataset that is not a single CT channel, an image without dense foreground, a spacing outside CT's range
        or a resampled size over the limit.
    """
    check_ct_channels(plans.dataset_json, f"dataset.json of {plans.dataset_name}")
    preprocessor = ScreenerPreprocessor(verbose=False, config=plans.config.preprocessing, allow_non_ct=allow_non_ct)
    data, seg, properties = preprocessor.run_case([str(f) for f in image_files], None, plans.plans_manager,
                                                  plans.configuration_manager, plans.dataset_json)
    return PreprocessedCase(data=data, body_mask=seg[0] == BODY_LABEL, properties=properties)

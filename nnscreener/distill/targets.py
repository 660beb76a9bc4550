"""The distillation targets: the teacher's outputs on the student's voxel grid, computed once and cached.

Per training case, the trained Screener model (the teacher, a density result folder, docs/design.md C9/C10) runs
over the teacher's own preprocessed case (C3) with a sliding window (the predictor's windows, padding and
blending, :func:`teacher_fields`): channel 0 is the anomaly map (NLL in nats, outside the body set to the body's
minimum as in C11), channels 1.. (``map+features``) the pooled descriptor the density scores, both upsampled
trilinearly per patch. :func:`resample_to_student` then maps that field onto the student's preprocessed grid: both
grids are crops and resamplings of the same raw scan, so each student voxel centre has an exact position in the
teacher's grid (per axis: student index -> raw index through the student's crop box and scale, raw -> teacher
through the teacher's; nnU-Net's resampling is cell-centred, i.e. ``align_corners=False``), read by trilinear
interpolation with edge values outside the teacher's crop (air, the body's minimum).

The cache that holds them is :mod:`nnscreener.distill.cache`'s.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from nnscreener import paths, stages
from nnscreener.config import ScreenerConfig
from nnscreener.inference.export import upsample_to_patch
from nnscreener.inference.sliding_window import batched, blending_weights, iter_windows, pad_to_patch
from nnscreener.plans import ScreenerPlans

BODY_LABEL = 1  # the body in both plans' preprocessed segs (docs/design.md C3)


def teacher_folder(config: ScreenerConfig, dataset_name: str) -> Path:
    """The teacher's density result folder: ``density.*`` picks the variant, ``distill.teacher_plans`` the plans."""
    d = config.density
    variant = stages.density_variant(d.condition, d.density, d.descriptor_variant, d.condition_variant)
    return paths.stage_folder(dataset_name, stages.DENSITY, variant, config.distill.teacher_plans or
                              paths.DEFAULT_PLANS)


@torch.no_grad()
def teacher_fields(model, data: torch.Tensor, patch_zyx: Sequence[int], step: float, blending: str,
                   batch_size: int, with_features: bool) -> torch.Tensor:
    """The teacher's blended outputs over one preprocessed volume (the predictor's sliding window, C channels).

    Args:
        model: a ScreenerModel (``anomaly_map`` / ``anomaly_map_and_features``), on its device, eval mode.
        data: (C, z, y, x) teacher-preprocessed intensities in [0, 1] (all channels of docs/design.md C3).
        patch_zyx, step, blending, batch_size: the window settings (the teacher plans' patch; ``inference.*``).
        with_features: also return the pooled descriptor channels.

    Returns:
        (C, z, y, x) float32 on the model's device: NLL in nats [, descriptor channels].
    """
    device = next(model.parameters()).device
    padded = pad_to_patch(torch.as_tensor(data, dtype=torch.float32), patch_zyx)
    volume = padded.data.to(device)
    weights = blending_weights(patch_zyx, blending, device)
    offset = torch.tensor(padded.offset_zyx, dtype=torch.int64)
    weighted, weight_sum = None, torch.zeros(volume.shape[1:], device=device)
    for batch in batched(iter_windows(volume.shape[1:], patch_zyx, step), batch_size):
        x = torch.stack([volume[(slice(None), *w)] for w in batch])
        origin = (torch.tensor([[s.start for s in w] for w in batch], dtype=torch.int64) - offset).to(device)
        out = model.anomaly_map_and_features(x, origin) if with_features else model.anomaly_map(x, origin)
        out = upsample_to_patch(out.float(), patch_zyx)  # (B, C, Z, Y, X)
        if weighted is None:
            weighted = torch.zeros((out.shape[1], *volume.shape[1:]), device=device)
        for value, window in zip(out, batch):
            weighted[(slice(None), *window)] += value * weights
            weight_sum[window] += weights
    return (weighted / weight_sum)[(slice(None), *padded.crop)]


def _axis_positions(n_out: int, out_lo: int, out_crop: int, in_lo: int, in_crop: int, n_in: int) -> np.ndarray:
    """Fractional input indices of the ``n_out`` output voxel centres along one axis (cell-centred grids)."""
    raw = out_lo + (np.arange(n_out) + 0.5) * out_crop / n_out - 0.5  # raw (transposed) voxel index
    return (raw - in_lo + 0.5) * n_in / in_crop - 0.5


def _interpolate_axis(field: torch.Tensor, axis: int, positions: np.ndarray) -> torch.Tensor:
    """Linear interpolation of ``field`` along ``axis`` at fractional ``positions`` (edge values outside)."""
    n = field.shape[axis]
    pos = torch.as_tensor(np.clip(positions, 0, n - 1), dtype=torch.float32, device=field.device)
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    shape = [1] * field.ndim
    shape[axis] = -1
    w = (pos - lo.float()).reshape(shape)
    return field.index_select(axis, lo) * (1 - w) + field.index_select(axis, hi) * w


def resample_to_student(field: torch.Tensor, teacher_props: Mapping[str, Any], teacher_transpose: Sequence[int],
                        student_props: Mapping[str, Any], student_transpose: Sequence[int],
                        student_shape: Sequence[int]) -> torch.Tensor:
    """Maps a (C, z, y, x) field on the teacher's preprocessed grid to the student's.

    Args:
        field: (C, *teacher shape) in the teacher plans' (transposed) axis order.
        teacher_props, student_props: nnU-Net properties (``bbox_used_for_cropping``,
            ``shape_after_cropping_and_before_resampling``) of the same raw scan in either plans.
        teacher_transpose, student_transpose: the plans' ``transpose_forward``.
        student_shape: the student's preprocessed (z, y, x) shape.

    Returns:
        (C, *student_shape) float32, trilinear, edge values outside the teacher's crop.
    """
    perm = [list(teacher_transpose).index(a) for a in student_transpose]  # teacher axis of each student axis
    out = field.permute(0, *[p + 1 for p in perm]).float()
    for k, j in enumerate(perm):
        positions = _axis_positions(int(student_shape[k]), int(student_props["bbox_used_for_cropping"][k][0]),
                                    int(student_props["shape_after_cropping_and_before_resampling"][k]),
                                    int(teacher_props["bbox_used_for_cropping"][j][0]),
                                    int(teacher_props["shape_after_cropping_and_before_resampling"][j]),
                                    int(field.shape[1 + j]))
        out = _interpolate_axis(out, k + 1, positions)
    return out.contiguous()


def case_targets(model, teacher: ScreenerPlans, teacher_case: tuple, student: ScreenerPlans,
                 student_case: tuple) -> np.ndarray:
    """One case's targets on the student grid.

    Args:
        model: the teacher ScreenerModel (eval mode, on its device).
        teacher, student: the two plans (the student's config decides ``distill.targets`` and ``inference.*``).
        teacher_case, student_case: ``(data, seg, properties)`` of the case in either plans (nnU-Net's
            ``load_case`` without its third item); seg 1 = body.

    Returns:
        (C, z, y, x) float32 on the student's grid: NLL in nats (the body's minimum outside the body) [, features].
    """
    cfg = student.config
    data_t, seg_t, props_t = teacher_case
    field = teacher_fields(model, torch.from_numpy(np.asarray(data_t, dtype=np.float32)),
                           teacher.configuration_manager.patch_size, cfg.inference.step_size,
                           cfg.inference.blending, cfg.inference.batch_size, cfg.distill.targets != "map")
    body = torch.from_numpy(np.asarray(seg_t[0]) == BODY_LABEL).to(field.device)
    inside = field[0][body]
    field[0] = torch.where(body, field[0], inside.min() if inside.numel() else field[0].min())
    data_s, _, props_s = student_case
    out = resample_to_student(field, props_t, teacher.plans_manager.transpose_forward, props_s,
                              student.plans_manager.transpose_forward, np.asarray(data_s).shape[1:])
    return out.cpu().numpy()

"""Anomaly maps from the distilled student alone (``nnScreener_predict --method distilled``).

The student (one UNet forward per window, no density) predicts the normalised map in its output channel 0; this
module turns it back into the teacher's units, ``map = output * iqr + median`` with the statistics stored in the
distill checkpoint, so the maps read like the teacher's (NLL in nats, docs/design.md C11) and thresholds transfer
approximately. Scans are preprocessed as the student's training data (nnU-Net's preprocessor of the student plans,
:func:`nnscreener.distill.preprocessing.preprocess_student_case`); the sliding window, blending and export back to
the scan's geometry are :class:`~nnscreener.inference.predictor.ScreenerPredictor`'s, with the student plans' patch
and resampling functions.
"""
from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, Tuple, Union

import torch
from torch import nn

from nnscreener.checkpoints import FINAL_CHECKPOINT, load_distill_checkpoint, strip_wrapper_prefixes
from nnscreener.config import ScreenerConfig
from nnscreener.distill.student import MAP_CHANNEL, build_student
from nnscreener.errors import ScreenerError
from nnscreener.plans import ScreenerPlans, load_plans_file

METHOD = "distilled"


class StudentAnomalyModel(nn.Module):
    """The student as the predictor's map model: ``anomaly_map(x, origin_zyx) -> (B, 1, Z, Y, X)`` in teacher nats.

    Args:
        network: the student UNet built without deep supervision (one output).
        median, iqr: the map channel's normalisation (teacher units).
    """

    def __init__(self, network: nn.Module, median: float, iqr: float) -> None:
        super().__init__()
        self.network = network
        self.median = float(median)
        self.iqr = float(iqr)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        """x (B, 1, Z, Y, X) student-preprocessed intensities; ``origin_zyx`` is unused (the student sees only x)."""
        out = self.network(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out[:, MAP_CHANNEL:MAP_CHANNEL + 1].float() * self.iqr + self.median


def load_student(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                 checkpoint_name: str = FINAL_CHECKPOINT) -> Tuple[StudentAnomalyModel, ScreenerPlans]:
    """The student of a distill result folder as a map model (eval mode, on ``device``) and its plans.

    Raises:
        ScreenerError: a missing folder, plans or checkpoint, or a checkpoint that is not a distill checkpoint.
    """
    folder = Path(folder)
    if not (folder / checkpoint_name).is_file():
        found = sorted(p.name for p in folder.glob("*.pth")) if folder.is_dir() else []
        raise ScreenerError(f"missing {folder / checkpoint_name} (found: {found or 'nothing'}); train it with "
                            f"nnScreener_train DATASET distill -p PLANS")
    checkpoint = load_distill_checkpoint(folder / checkpoint_name)
    config = ScreenerConfig.from_dict(checkpoint["screener_config"])
    plans = replace(load_plans_file(folder / "plans.json", folder / "dataset.json"), config=config)
    network = build_student(plans, int(checkpoint["out_channels"]), deep_supervision=False)
    network.load_state_dict(strip_wrapper_prefixes(checkpoint["network_weights"]))
    model = StudentAnomalyModel(network, checkpoint["target_median"][MAP_CHANNEL],
                                checkpoint["target_iqr"][MAP_CHANNEL])
    return model.to(device).eval(), plans


def student_predictor(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                      checkpoint_name: str = FINAL_CHECKPOINT, allow_non_ct: bool = False, **kwargs: Any):
    """A :class:`~nnscreener.inference.predictor.ScreenerPredictor` over the student of ``folder``; ``kwargs`` go to
    its constructor (step size, blending, workers, ...)."""
    from nnscreener.distill.preprocessing import preprocess_student_case
    from nnscreener.inference.predictor import ScreenerPredictor

    model, plans = load_student(folder, device, checkpoint_name)
    preprocess = functools.partial(preprocess_student_case, allow_non_ct=allow_non_ct)
    return ScreenerPredictor(model, plans, device, preprocess_fn=preprocess, method=METHOD, **kwargs)

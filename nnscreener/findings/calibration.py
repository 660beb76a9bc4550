"""Thresholds calibrated on normal scans: pooled body-voxel scores, named operating points and the calibration file
(docs/design.md C13; this module owns its name and format).

A threshold ``t`` marks the voxels whose score is strictly above it (``map > t``). On the normal scans of a
calibration it has two rates:

- the **voxel false-positive rate** ``fpr(t)``: the fraction of all body voxels of all normal scans (pooled) whose
  score is above ``t``;
- the **false-positive volume per scan** ``fp_ml(t)``: the mean over the normal scans of the body volume (mL) above
  ``t``, i.e. ``sum_i voxel_ml_i * #{body voxels of scan i above t} / n_scans``.

The operating point ``fpr=r`` is the smallest observed score ``t`` with ``fpr(t) <= r``, and ``fp_ml=V`` the
smallest observed score with ``fp_ml(t) <= V`` (so the realised rate never exceeds the target on the normal scans;
ties can make it smaller). Both are computed exactly from every body voxel, or, for a scan with more than
``max_voxels_per_scan`` body voxels, from a seeded uniform subsample whose voxels each stand for
``n_body / n_sampled`` voxels. Rates other than the stored operating points are interpolated (linearly in the
logarithm of the rate) between the points of the stored curve.

The body is :func:`nnscreener.planning.body_mask.body_mask_from_hu` of the scan, the body the evaluation draws its
normal voxels from (nnscreener/evaluation/sampling.py). Scores are NLL in nats, in the scan's own geometry.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from nnscreener.errors import ScreenerError

CALIBRATION_FORMAT = "nnscreener-calibration"
CALIBRATION_VERSION = 1
DEFAULT_FPRS = (1e-2, 1e-3, 1e-4)  # named voxel false-positive rates
DEFAULT_FP_ML = (1.0, 10.0)  # named false-positive volumes per scan, mL
DEFAULT_MAX_VOXELS_PER_SCAN = 4_000_000  # body voxels kept per scan (a seeded uniform subsample above this)
KINDS = ("fpr", "fp_ml", "value")
MODEL_KEYS = ("checkpoint_sha256", "dataset", "plans", "step_size", "blending")  # what must match at prediction  # operating-point kinds of --threshold
QUANTILE_LEVELS = tuple(sorted({round(i / 100, 2) for i in range(101)} | {0.995, 0.999, 0.9995, 0.9999, 0.99999,
                                                                          0.999999}))
_CURVE_DECADES = (-8, 0)  # fpr levels of the stored curve: 10 per decade
_CURVE_ML = (-4, 5)  # fp_ml levels of the stored curve (mL): 10 per decade
_RATE_RTOL = 1e-9  # relative tolerance of rate comparisons (float64 sums of many voxel weights)
FP_ML_DEFINITION = ("fp_ml(t) = mean over the normal scans of the body volume in mL whose score is above t "
                    "(sum_i voxel_ml_i * n_i(score > t) / n_scans)")
FPR_DEFINITION = "fpr(t) = fraction of the pooled body voxels of all normal scans whose score is above t"


def calibration_file(density_folder: Union[str, Path], checkpoint_name: str) -> Path:
    """Where the calibration of a density model's checkpoint lives: ``{folder}/calibration_{checkpoint stem}.json``.

    >>> calibration_file("/r/density__masking_flow__nnScreenerPlans", "checkpoint_final.pth").name
    'calibration_checkpoint_final.json'
    """
    return Path(density_folder) / f"calibration_{Path(checkpoint_name).stem}.json"


@dataclass(frozen=True)
class ScanScores:
    """The body-voxel scores of one normal scan.

    Attributes:
        case: case identifier.
        scores: (m,) float scores (NLL, nats) of all body voxels, or of a uniform subsample of them.
        n_body: number of body voxels of the scan (>= m).
        voxel_ml: volume of one voxel in mL (product of the spacing in mm / 1000).
        n_voxels: number of voxels of the scan.
    """

    case: str
    scores: np.ndarray
    n_body: int
    voxel_ml: float
    n_voxels: int


def body_scores(case: str, score_map: np.ndarray, body: np.ndarray, spacing_xyz: Sequence[float],
                max_voxels: int = DEFAULT_MAX_VOXELS_PER_SCAN, seed: int = 0) -> ScanScores:
    """The body-voxel scores of one scan (a seeded uniform subsample of ``max_voxels`` when the body is larger).

    Args:
        case: case identifier.
        score_map: (z, y, x) anomaly map, NLL in nats.
        body: (z, y, x) bool body mask of the same shape.
        spacing_xyz: voxel spacing (x, y, z) in mm.
        max_voxels: body voxels kept at most.
        seed: seed of the subsample (combined with the case name).
    """
    if score_map.shape != body.shape:
        raise ScreenerError(f"case {case}: map {score_map.shape} and body mask {body.shape} differ in shape")
    scores = np.asarray(score_map)[body].astype(np.float32)
    if not np.isfinite(scores).all():
        raise ScreenerError(f"case {case}: the anomaly map contains NaN or infinite values")
    n_body = int(scores.size)
    if n_body > max_voxels:
        from nnscreener.evaluation.sampling import case_rng

        scores = scores[np.sort(case_rng(seed, case).choice(n_body, size=max_voxels, replace=False))]
    return ScanScores(case, scores, n_body, float(np.prod([float(s) for s in spacing_xyz])) / 1000.0,
                      int(score_map.size))


class NormalScores:
    """The pooled body-voxel scores of normal scans with each voxel's share of ``fpr`` and of ``fp_ml``.

    Args:
        scans: the scans' scores (at least one scan with at least one body voxel).
    """

    def __init__(self, scans: Sequence[ScanScores]) -> None:
        if not scans or sum(s.scores.size for s in scans) == 0:
            raise ScreenerError("calibration needs at least one normal scan with body voxels")
        n_total = sum(s.n_body for s in scans)
        scores = np.concatenate([s.scores for s in scans]).astype(np.float64)
        stands_for = np.concatenate([np.full(s.scores.size, s.n_body / max(s.scores.size, 1)) for s in scans])
        per_ml = np.concatenate([np.full(s.scores.size, s.voxel_ml / len(scans)) for s in scans])
        order = np.argsort(scores, kind="stable")
        self.scores = scores[order]  # (N,) ascending
        self.n_scans = len(scans)
        self.n_body_voxels = int(n_total)
        self.scans = list(scans)
        self.tails = {  # tails[kind][j] = rate carried by voxels j.. (ascending order); tails[kind][N] = 0
            "fpr": _tail_sums(stands_for[order] / n_total),
            "fp_ml": _tail_sums(stands_for[order] * per_ml[order]),
        }

    def rate_above(self, kind: str, thresholds: Union[float, np.ndarray]) -> np.ndarray:
        """``fpr(t)`` or ``fp_ml(t)`` (see the module docstring) for each threshold ``t``."""
        index = np.searchsorted(self.scores, np.asarray(thresholds, dtype=np.float64), side="right")
        return self.tails[kind][index]

    def ml_by_scan(self, threshold: float) -> List[float]:
        """Body volume (mL) above ``threshold`` in each scan, in scan order (subsamples scaled to the body)."""
        return [float((s.scores > threshold).sum()) * s.n_body / max(s.scores.size, 1) * s.voxel_ml
                for s in self.scans]

    def threshold_for(self, kind: str, target: float) -> float:
        """The smallest observed score ``t`` with ``rate_above(kind, t) <= target``."""
        tail_next = self.tails[kind][1:]  # tail_next[j]: rate of the voxels after j, non-increasing
        limit = float(target) * (1 + _RATE_RTOL)  # a rate equal to the target up to summation rounding counts as equal
        j = int(np.searchsorted(-tail_next, -limit, side="left"))
        return float(self.scores[min(j, self.scores.size - 1)])

    def quantile(self, level: float) -> float:
        """The pooled body-voxel score at quantile ``level`` in [0, 1] (at most a fraction 1 - level above it)."""
        return self.threshold_for("fpr", 1.0 - level)

    def curve(self) -> Dict[str, List[float]]:
        """Thresholds (ascending) with their ``fpr`` and ``fp_ml``, dense in the log of both rates."""
        targets = [("fpr", 10.0 ** (k / 10)) for k in range(10 * _CURVE_DECADES[0], 10 * _CURVE_DECADES[1] + 1)]
        targets += [("fp_ml", 10.0 ** (k / 10)) for k in range(10 * _CURVE_ML[0], 10 * _CURVE_ML[1] + 1)]
        thresholds = {self.threshold_for(kind, target) for kind, target in targets}
        thresholds |= {float(self.scores[0]), float(self.scores[-1])}
        t = np.array(sorted(thresholds))
        return {"threshold": t.tolist(), "fpr": self.rate_above("fpr", t).tolist(),
                "fp_ml_per_scan": self.rate_above("fp_ml", t).tolist()}


def _tail_sums(weights: np.ndarray) -> np.ndarray:
    """(N + 1,) float64: entry j is the sum of ``weights[j:]``; the last entry is 0."""
    return np.concatenate([np.cumsum(weights[::-1], dtype=np.float64)[::-1], [0.0]])


def operating_point_name(kind: str, target: float) -> str:
    """``"fpr=0.001"``, ``"fp_ml=10"``: the name a ``--threshold`` spec gives (see :func:`parse_operating_point`).

    >>> operating_point_name("fpr", 1e-3), operating_point_name("fp_ml", 10.0)
    ('fpr=0.001', 'fp_ml=10')
    """
    return f"{kind}={target:g}"


def operating_point(normal: NormalScores, kind: str, target: float) -> Dict[str, Any]:
    """A named operating point: its threshold and the rates it realises on the normal scans."""
    threshold = normal.threshold_for(kind, target)
    return {"name": operating_point_name(kind, target), "kind": kind, "target": float(target),
            "threshold": threshold, "fpr": float(normal.rate_above("fpr", threshold)),
            "fp_ml_per_scan": float(normal.rate_above("fp_ml", threshold)),
            "fp_ml_by_case": normal.ml_by_scan(threshold)}


def build_calibration(scans: Sequence[ScanScores], provenance: Mapping[str, Any],
                      fprs: Sequence[float] = DEFAULT_FPRS, fp_mls: Sequence[float] = DEFAULT_FP_ML) -> Dict[str, Any]:
    """The calibration (docs/design.md C13) of the given normal scans, as a JSON-ready dict.

    Args:
        scans: body-voxel scores of each normal scan.
        provenance: what produced the scores (model folder, checkpoint and its sha256, prediction settings, the
            scans' folder), stored under ``"model"`` / ``"normal_scans"`` keys as given.
        fprs: named voxel false-positive rates, each in (0, 1).
        fp_mls: named false-positive volumes per scan in mL, each > 0.
    """
    for kind, targets in (("fpr", fprs), ("fp_ml", fp_mls)):
        for target in targets:
            check_target(kind, float(target))
    normal = NormalScores(scans)
    return {
        "format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, **dict(provenance),
        "cases": [{"case": s.case, "voxels": s.n_voxels, "body_voxels": s.n_body, "scored_voxels": int(s.scores.size),
                   "voxel_ml": s.voxel_ml} for s in scans],
        "n_scans": normal.n_scans, "n_body_voxels": normal.n_body_voxels,
        "definitions": {"threshold": "a voxel is above the threshold t when its score > t", "fpr": FPR_DEFINITION,
                        "fp_ml": FP_ML_DEFINITION, "units": "scores are NLL in nats; volumes in mL"},
        "quantiles": {"levels": list(QUANTILE_LEVELS), "scores": [normal.quantile(q) for q in QUANTILE_LEVELS]},
        "operating_points": [operating_point(normal, "fpr", float(r)) for r in fprs]
                            + [operating_point(normal, "fp_ml", float(v)) for v in fp_mls],
        "curve": normal.curve(),
    }


def check_target(kind: str, target: float) -> None:
    """Raises ScreenerError unless ``target`` is a valid rate of ``kind`` (fpr in (0, 1), fp_ml > 0)."""
    if kind == "fpr" and not 0 < target < 1:
        raise ScreenerError(f"a voxel false-positive rate must lie in (0, 1), got fpr={target:g}")
    if kind == "fp_ml" and not (target > 0 and math.isfinite(target)):
        raise ScreenerError(f"a false-positive volume per scan must be > 0 mL, got fp_ml={target:g}")
    if kind not in KINDS:
        raise ScreenerError(f"unknown operating-point kind {kind!r}; one of {list(KINDS)}")


def write_calibration(calibration: Mapping[str, Any], path: Union[str, Path], overwrite: bool = False) -> Path:
    """Writes the calibration JSON (under a hidden name, then renamed).

    Raises:
        ScreenerError: the file exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ScreenerError(f"calibration {path} exists; pass --overwrite to replace it")
    partial = path.with_name(f".partial_{os.getpid()}_{path.name}")
    partial.write_text(json.dumps(calibration, indent=1))
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class OperatingPoint:
    """A ``--threshold`` spec: ``fpr=R`` (voxel false-positive rate), ``fp_ml=V`` (mL per scan) or ``value=X``."""

    kind: str
    target: float

    @property
    def name(self) -> str:
        return operating_point_name(self.kind, self.target)


def parse_operating_point(spec: str) -> OperatingPoint:
    """Parses ``fpr=1e-3``, ``fp_ml=5`` or ``value=12.5`` (raises ScreenerError with the accepted forms).

    >>> parse_operating_point("fp_ml=5")
    OperatingPoint(kind='fp_ml', target=5.0)
    """
    kind, _, value = spec.partition("=")
    try:
        target = float(value)
    except ValueError:
        target = float("nan")
    if kind.strip() not in KINDS or not math.isfinite(target):
        raise ScreenerError(f"--threshold {spec!r} is not one of fpr=RATE (e.g. fpr=1e-3), fp_ml=MILLILITRES "
                            f"(e.g. fp_ml=10) or value=SCORE (a score in nats)")
    if kind.strip() != "value":
        check_target(kind.strip(), target)
    return OperatingPoint(kind.strip(), target)


class Calibration:
    """A calibration file, read back: thresholds for operating points and percentiles among normal voxels.

    Args:
        data: the file's content (docs/design.md C13).
        path: where it was read from (for messages).
    """

    def __init__(self, data: Mapping[str, Any], path: Union[str, Path]) -> None:
        self.data, self.path = dict(data), Path(path)
        curve = data["curve"]
        self.thresholds = np.asarray(curve["threshold"], dtype=np.float64)  # ascending
        self.rates = {"fpr": np.asarray(curve["fpr"], dtype=np.float64),
                      "fp_ml": np.asarray(curve["fp_ml_per_scan"], dtype=np.float64)}

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Calibration":
        """Reads a calibration file; ScreenerError naming it when missing, unreadable or of another format."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ScreenerError(f"no calibration {path}: run nnScreener_calibrate on normal scans first, or use "
                                f"--threshold value=SCORE") from None
        except (OSError, ValueError) as e:
            raise ScreenerError(f"calibration {path} is unreadable: {e}") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT or "curve" not in data:
            raise ScreenerError(f"{path} is not an nnScreener calibration file")
        return cls(data, path)

    def threshold(self, point: OperatingPoint) -> float:
        """The score threshold of an operating point: a stored one exactly, others interpolated on the curve.

        Raises:
            ScreenerError: the rate lies outside what the normal scans resolve (no normal voxel that rare).
        """
        if point.kind == "value":
            return float(point.target)
        for stored in self.data.get("operating_points", []):
            if stored["kind"] == point.kind and math.isclose(stored["target"], point.target, rel_tol=1e-9):
                return float(stored["threshold"])
        rates = self.rates[point.kind]
        usable = rates > 0
        low, high = float(rates[usable].min()), float(rates[usable].max())
        if not low <= point.target <= high:
            raise ScreenerError(f"{point.name} lies outside the range the calibration {self.path} resolves "
                                f"({point.kind} {low:.3g} .. {high:.3g}); use a rate in that range or value=SCORE")
        log_rates = np.log(rates[usable])[::-1]  # ascending
        return float(np.interp(math.log(point.target), log_rates, self.thresholds[usable][::-1]))

    def percentile(self, scores: Union[float, np.ndarray]) -> np.ndarray:
        """100 * (1 - fpr(score)): the percentile of each score among the normal body voxels (interpolated on
        the stored curve; 100 above the highest normal score, 0 below the lowest)."""
        fpr = np.interp(np.asarray(scores, dtype=np.float64), self.thresholds, self.rates["fpr"], left=1.0, right=0.0)
        return 100.0 * (1.0 - fpr)

    def model_mismatch(self, expected: Mapping[str, Any]) -> List[str]:
        """The fields of :data:`MODEL_KEYS` in the stored ``"model"`` record that differ from ``expected``
        (``"field: stored != now"``). The folder's path is not compared: a moved model keeps its calibration."""
        stored = self.data.get("model", {})
        return [f"{key}: {stored.get(key)!r} != {expected.get(key)!r}" for key in MODEL_KEYS
                if key in expected and stored.get(key) != expected[key]]


def rate_columns(calibration: Optional[Calibration], threshold: float) -> Tuple[Optional[float], Optional[float]]:
    """(fpr, fp_ml per scan) of ``threshold`` on the calibration's normal scans, or (None, None) without one."""
    if calibration is None:
        return None, None
    fpr = float(np.interp(threshold, calibration.thresholds, calibration.rates["fpr"], left=1.0, right=0.0))
    ml = float(np.interp(threshold, calibration.thresholds, calibration.rates["fp_ml"],
                         left=float(calibration.rates["fp_ml"][0]), right=0.0))
    return fpr, ml

"""Evaluates a folder of anomaly maps against a folder of lesion labels: per case, per lesion kind and pooled.

Pooled ("dataset") metrics follow the paper: all lesion voxels of all scans and K sampled normal body voxels per
scan are pooled, then voxel AUROC, AUROC up to FPR ``max_fpr`` (area / ``max_fpr``) and MVTec's AUPRO up to
``max_fpr`` (26-connected regions, each region of the dataset weighted equally) are computed once. Cases
without lesions contribute negatives only. Per lesion kind (label value), the positives are the voxels of that
kind and the negatives the same pooled sample.

Besides, every lesion's *local* AUROC (its voxels against the normal body voxels of a ring 15-30 mm around it,
:mod:`nnscreener.evaluation.local_contrast`) is averaged over the lesions, per case, per kind and over the dataset
(``local_auroc``, each lesion weighted equally): whether a map marks lesions against their own surroundings rather
than scoring some regions higher than others.

Memory: one case's volumes at a time, plus the samples (all lesion voxels and K negatives per case).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
from tqdm import tqdm

from nnscreener.errors import ScreenerError
from nnscreener.evaluation import metrics
from nnscreener.evaluation.local_contrast import RING_MM
from nnscreener.evaluation.sampling import (BALANCED_VOXELS_PER_SCAN, DEFAULT_N_NEGATIVES, PROTOCOLS, CaseSample,
                                            balanced_subsample, load_case_sample, volume_files_by_case)

METRIC_NAMES = ("auroc", "partial_auroc", "aupro")
"""Keys of the metric values in every summary entry (JSON null where undefined, e.g. a case without lesions)."""

PathLike = Union[str, Path]


def metric_titles(max_fpr: float) -> Dict[str, str]:
    """Column titles of the metrics, e.g. ``{"auroc": "AUROC", "partial_auroc": "AUROC@0.3", ...}``."""
    return {"auroc": "AUROC", "partial_auroc": f"AUROC@{max_fpr:g}", "aupro": f"AUPRO@{max_fpr:g}"}


def lesion_kinds_from_dataset_json(path: PathLike) -> Dict[int, str]:
    """Label value -> lesion kind name, from dataset.json's ``"lesion_kinds"`` (docs/design.md C1), else its
    ``"labels"`` without the background; integer values only.

    Raises:
        ScreenerError: the file is missing or not JSON.
    """
    path = Path(path)
    try:
        dataset = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ScreenerError(f"cannot read dataset.json {path}: {e}") from e
    if "lesion_kinds" in dataset:
        try:
            return {int(value): str(name) for value, name in dataset["lesion_kinds"].items()}
        except (ValueError, AttributeError) as e:
            raise ScreenerError(f"{path}: \"lesion_kinds\" must map label values to names, e.g. "
                                f"{{\"1\": \"solid_lung_nodule\"}}: {e}") from e
    return {int(value): str(name) for name, value in dataset.get("labels", {}).items()
            if isinstance(value, int) and value != 0}


def compute_metrics(positive_scores: np.ndarray, region_ids: np.ndarray, negative_scores: np.ndarray,
                    max_fpr: float) -> Dict[str, float]:
    """The three metrics from lesion voxels (with regions) and normal voxels.

    Args:
        positive_scores: (n_pos,) scores of all lesion voxels.
        region_ids: (n_pos,) region of each lesion voxel, unique over the pooled cases.
        negative_scores: (n_neg,) scores of normal voxels.
        max_fpr: FPR bound of the partial metrics.
    """
    scores = np.concatenate([np.asarray(positive_scores, np.float64), np.asarray(negative_scores, np.float64)])
    labels = np.concatenate([np.ones(len(positive_scores), bool), np.zeros(len(negative_scores), bool)])
    return {
        "auroc": metrics.voxel_auroc(scores, labels),
        "partial_auroc": metrics.partial_auroc(scores, labels, max_fpr),
        "aupro": metrics.aupro(positive_scores, region_ids, negative_scores, max_fpr),
    }


def _no_metrics() -> Dict[str, None]:
    return {name: None for name in METRIC_NAMES}


@dataclass
class _Pool:
    """Samples of all cases, with region ids made unique over the dataset."""

    positive_scores: List[np.ndarray] = field(default_factory=list)
    positive_labels: List[np.ndarray] = field(default_factory=list)
    region_ids: List[np.ndarray] = field(default_factory=list)
    kind_region_ids: List[np.ndarray] = field(default_factory=list)
    negative_scores: List[np.ndarray] = field(default_factory=list)
    local_aurocs: List[np.ndarray] = field(default_factory=list)
    local_kinds: List[np.ndarray] = field(default_factory=list)
    n_regions: int = 0
    n_kind_regions: int = 0

    def add(self, sample: CaseSample) -> None:
        self.positive_scores.append(sample.positive_scores)
        self.positive_labels.append(sample.positive_labels)
        self.region_ids.append(sample.region_ids + self.n_regions)
        self.kind_region_ids.append(sample.kind_region_ids + self.n_kind_regions)
        self.negative_scores.append(sample.negative_scores)
        self.local_aurocs.append(sample.local_aurocs)
        self.local_kinds.append(sample.local_kinds)
        self.n_regions += sample.n_regions
        self.n_kind_regions += int(sample.kind_region_ids.max(initial=0))

    def arrays(self) -> Dict[str, np.ndarray]:
        return {name: np.concatenate(getattr(self, name)) for name in
                ("positive_scores", "positive_labels", "region_ids", "kind_region_ids", "negative_scores",
                 "local_aurocs", "local_kinds")}


def mean_local_auroc(local_aurocs: np.ndarray) -> Optional[float]:
    """The mean local AUROC of lesions (NaN entries, lesions without a ring, left out); None if there is none."""
    defined = np.asarray(local_aurocs, np.float64)
    defined = defined[np.isfinite(defined)]
    return float(defined.mean()) if defined.size else None


def _case_entry(sample: CaseSample, max_fpr: float) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "n_positive_voxels": int(sample.positive_scores.size),
        "n_regions": sample.n_regions,
        "label_values": sorted(int(v) for v in np.unique(sample.positive_labels)),
        "n_negative_voxels": int(sample.negative_scores.size),
        "n_negative_candidates": sample.n_negative_candidates,
        "local_auroc": mean_local_auroc(sample.local_aurocs),
    }
    if sample.positive_scores.size and sample.negative_scores.size:
        entry.update(compute_metrics(sample.positive_scores, sample.region_ids, sample.negative_scores, max_fpr))
    else:
        entry.update(_no_metrics())
    return entry


def _matched_files(ref_dir: PathLike, pred_dir: PathLike,
                   images_dir: Optional[PathLike]) -> Dict[str, Dict[str, Optional[Path]]]:
    refs = volume_files_by_case(ref_dir)
    if not refs:
        raise ScreenerError(f"no label files (.nii.gz, .nii, .nrrd, .mha) in {ref_dir}")
    preds = volume_files_by_case(pred_dir)
    images = volume_files_by_case(images_dir, channel_suffix="_0000") if images_dir is not None else {}
    for what, folder, found in (("anomaly maps", pred_dir, preds), ("images", images_dir, images)):
        if folder is None:
            continue
        missing = sorted(set(refs) - set(found))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ScreenerError(f"{len(missing)} of {len(refs)} labelled cases have no {what} in {folder}: {shown}")
    return {case: {"label": refs[case], "map": preds[case], "image": images.get(case)} for case in sorted(refs)}


def evaluate_folder(ref_dir: PathLike, pred_dir: PathLike, images_dir: Optional[PathLike] = None,
                    n_negatives: int = DEFAULT_N_NEGATIVES, seed: int = 0,
                    lesion_kinds: Optional[Mapping[int, str]] = None, max_fpr: float = 0.3,
                    progress: bool = False, protocol: str = "all") -> Dict[str, Any]:
    """Evaluates every labelled case of ``ref_dir`` against its anomaly map in ``pred_dir``.

    Args:
        ref_dir: folder of lesion labels ``{case}.nii.gz`` (0 background, >0 lesion kinds), e.g. ``labelsTs``.
        pred_dir: folder of anomaly maps ``{case}.nii.gz`` in the labels' exact geometry (docs/design.md C11).
        images_dir: optional folder of CT images ``{case}_0000.nii.gz`` in HU; negatives are then drawn from
            ``body_mask_from_hu``, otherwise from the voxels where the map is above its minimum.
        n_negatives: K normal voxels drawn per case (without replacement, seeded per case); protocol ``all``.
        seed: base seed of the voxel draws.
        lesion_kinds: label value -> kind name (e.g. dataset.json's ``"lesion_kinds"``). Per-kind metrics are
            reported when given or when the labels hold more than one lesion value; unnamed values are called
            ``label_<value>``.
        max_fpr: FPR bound of AUROC@ and AUPRO@, in (0, 1].
        progress: show a progress bar.
        protocol: ``all`` or ``balanced`` (see :data:`~nnscreener.evaluation.sampling.PROTOCOLS`).

    Returns:
        A JSON-serializable summary: ``{"settings", "dataset", "per_kind", "per_case"}``; metric values under
        the keys of ``METRIC_NAMES``, null where undefined.

    Raises:
        ScreenerError: missing folders or cases, geometry mismatch (naming the case), no lesion voxel at all.
    """
    max_fpr = metrics.check_max_fpr(max_fpr)
    if protocol not in PROTOCOLS:
        raise ScreenerError(f"unknown evaluation protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    if n_negatives < 1:
        raise ScreenerError(f"the number of negatives per case must be >= 1, got {n_negatives}")
    if protocol == "balanced":
        n_negatives = BALANCED_VOXELS_PER_SCAN
    pool = _Pool()
    per_case: Dict[str, Dict[str, Any]] = {}
    for case, case_files in tqdm(_matched_files(ref_dir, pred_dir, images_dir).items(), desc="evaluating",
                                 disable=not progress):
        sample = load_case_sample(case, case_files["label"], case_files["map"], case_files["image"],
                                  n_negatives=n_negatives, seed=seed)
        if protocol == "balanced":
            sample = balanced_subsample(sample, BALANCED_VOXELS_PER_SCAN, seed)
        per_case[case] = _case_entry(sample, max_fpr)
        pool.add(sample)
    pooled = pool.arrays()
    return {
        "settings": _settings(ref_dir, pred_dir, images_dir, n_negatives, seed, max_fpr, protocol),
        "dataset": _dataset_entry(pool, pooled, per_case, ref_dir, max_fpr),
        "per_kind": _per_kind(pooled, per_case, lesion_kinds, max_fpr),
        "per_case": per_case,
    }


def _dataset_entry(pool: _Pool, pooled: Mapping[str, np.ndarray], per_case: Mapping[str, Mapping[str, Any]],
                   ref_dir: PathLike, max_fpr: float) -> Dict[str, Any]:
    """Counts and pooled metrics over every case; ScreenerError when a class has no voxel at all."""
    if pooled["positive_scores"].size == 0:
        raise ScreenerError(f"no lesion voxel in any label of {ref_dir}: AUROC and AUPRO are undefined")
    if pooled["negative_scores"].size == 0:
        raise ScreenerError(f"no normal body voxel in any case of {ref_dir}: AUROC and AUPRO are undefined")
    return {
        "n_cases": len(per_case),
        "n_cases_with_lesions": sum(1 for entry in per_case.values() if entry["n_positive_voxels"]),
        "n_positive_voxels": int(pooled["positive_scores"].size),
        "n_regions": pool.n_regions,
        "n_negative_voxels": int(pooled["negative_scores"].size),
        # the maps' mean score on normal tissue and in lesions: for NLL maps, the held-out NLL (nats) of normal
        # and of lesion tissue
        "mean_normal_score": float(np.mean(pooled["negative_scores"])),
        "mean_lesion_score": float(np.mean(pooled["positive_scores"])),
        "local_auroc": mean_local_auroc(pooled["local_aurocs"]),
        "n_local_lesions": int(np.isfinite(pooled["local_aurocs"]).sum()),
        **compute_metrics(pooled["positive_scores"], pooled["region_ids"], pooled["negative_scores"], max_fpr),
    }


def _settings(ref_dir: PathLike, pred_dir: PathLike, images_dir: Optional[PathLike], n_negatives: int, seed: int,
              max_fpr: float, protocol: str) -> Dict[str, Any]:
    """What a summary was computed from and how (written into the summary)."""
    voxels = ("every lesion voxel and n_negatives_per_case normal body voxels per case" if protocol == "all" else
              f"up to {BALANCED_VOXELS_PER_SCAN} lesion and {BALANCED_VOXELS_PER_SCAN} normal body voxels per case")
    return {
        "ref_dir": str(ref_dir),
        "pred_dir": str(pred_dir),
        "images_dir": None if images_dir is None else str(images_dir),
        "protocol": protocol,
        "voxels": voxels,
        "n_negatives_per_case": int(n_negatives),
        "seed": int(seed),
        "max_fpr": max_fpr,
        "region_connectivity": metrics.CONNECTIVITY,
        "body": "body_mask_from_hu of the images" if images_dir is not None else "voxels above the map's minimum",
        "geometry": "as stored in the label files (the original image geometry)",
        "metrics": {"auroc": "area under the voxel ROC curve",
                    "partial_auroc": f"area under the ROC curve up to FPR {max_fpr:g}, divided by {max_fpr:g}",
                    "aupro": f"MVTec AUPRO up to FPR {max_fpr:g} (26-connected regions), divided by {max_fpr:g}",
                    "local_auroc": f"mean over lesions (26-connected regions) of the AUROC of the lesion's voxels "
                                   f"against the normal body voxels {RING_MM[0]:g}-{RING_MM[1]:g} mm around it "
                                   f"(all voxels, whatever the protocol)"},
    }


def _per_kind(pooled: Mapping[str, np.ndarray], per_case: Mapping[str, Mapping[str, Any]],
              lesion_kinds: Optional[Mapping[int, str]], max_fpr: float) -> Dict[str, Dict[str, Any]]:
    values = sorted(int(v) for v in np.unique(pooled["positive_labels"]))
    if lesion_kinds is None and len(values) <= 1:
        return {}
    names = {int(k): v for k, v in (lesion_kinds or {}).items()}
    result = {}
    for value in values:
        of_kind = pooled["positive_labels"] == value
        region_ids = pooled["kind_region_ids"][of_kind]
        result[names.get(value, f"label_{value}")] = {
            "label_value": value,
            "n_cases": sum(1 for entry in per_case.values() if value in entry["label_values"]),
            "n_positive_voxels": int(of_kind.sum()),
            "n_regions": int(np.unique(region_ids).size),
            "local_auroc": mean_local_auroc(pooled["local_aurocs"][pooled["local_kinds"] == value]),
            **compute_metrics(pooled["positive_scores"][of_kind], region_ids, pooled["negative_scores"], max_fpr),
        }
    return result


def _format_metric(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_summary_table(summary: Mapping[str, Any], per_case: bool = True) -> str:
    """A plain-text table of a summary: one row per case with lesions, per lesion kind, and the pooled row."""
    titles = metric_titles(summary["settings"]["max_fpr"])
    header = (f"{'':<32} {'voxels':>9} {'regions':>7} " + " ".join(f"{titles[m]:>10}" for m in METRIC_NAMES)
              + f" {'local AUROC':>11}")

    def row(name: str, entry: Mapping[str, Any]) -> str:
        return (f"{name[:32]:<32} {entry['n_positive_voxels']:>9} {entry['n_regions']:>7} "
                + " ".join(f"{_format_metric(entry[m]):>10}" for m in METRIC_NAMES)
                + f" {_format_metric(entry.get('local_auroc')):>11}")

    lines = [header, "-" * len(header)]
    if per_case:
        lines += [row(case, entry) for case, entry in summary["per_case"].items() if entry["n_positive_voxels"]]
        n_without = sum(1 for entry in summary["per_case"].values() if not entry["n_positive_voxels"])
        if n_without:
            lines.append(f"({n_without} cases without lesions: negatives only)")
        lines.append("-" * len(header))
    lines += [row(f"kind: {name}", entry) for name, entry in summary["per_kind"].items()]
    dataset = summary["dataset"]
    lines.append(row(f"ALL ({dataset['n_cases']} cases, pooled)", dataset))
    settings = summary["settings"]
    lines.append(f"protocol {settings.get('protocol', 'all')}: {settings.get('voxels', '')}; negatives: "
                 f"{settings['n_negatives_per_case']} per case from {settings['body']} outside lesions, "
                 f"seed {settings['seed']}")
    return "\n".join(lines)


def write_summary(summary: Mapping[str, Any], path: PathLike) -> Path:
    """Writes the summary as indented JSON (parent folders created) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path

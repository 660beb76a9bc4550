"""Markdown tables that compare several evaluated methods (the model beside its floors and controls)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from nnscreener.evaluation.evaluate import METRIC_NAMES, metric_titles


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_results_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Two markdown tables from ``{method name: evaluate_folder summary}``.

    The first has one row per method with the pooled AUROC, AUROC@max_fpr and AUPRO@max_fpr; the second the
    voxel AUROC of each method per lesion kind (kinds absent from a summary show ``-``).
    """
    if not summaries:
        raise ValueError("no summaries to tabulate")
    first = next(iter(summaries.values()))
    titles = metric_titles(first["settings"]["max_fpr"])
    lines: List[str] = [
        "| method | " + " | ".join(titles[m] for m in METRIC_NAMES) + " |",
        "|---|" + "---:|" * len(METRIC_NAMES),
    ]
    for name, summary in summaries.items():
        lines.append(f"| {name} | " + " | ".join(_cell(summary["dataset"][m]) for m in METRIC_NAMES) + " |")

    kinds: Dict[str, None] = {}
    for summary in summaries.values():
        kinds.update(dict.fromkeys(summary.get("per_kind", {})))
    if kinds:
        lines += ["", "Voxel AUROC per lesion kind:", "",
                  "| method | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for name, summary in summaries.items():
            per_kind = summary.get("per_kind", {})
            lines.append(f"| {name} | " + " | ".join(_cell(per_kind.get(k, {}).get("auroc")) for k in kinds) + " |")
    return "\n".join(lines)

"""A report a person reads without Python: one PNG per scan with its top findings and an index HTML for the folder.

``{case}_findings.png``: one row per finding (the :data:`REPORT_FINDINGS` highest by max score), axial, coronal and
sagittal slices through its centroid with the map overlaid (nnscreener/inference/previews.py) and the finding's
outline, and the findings table beside them; the title names the operating point, its threshold and what it means
on the normal scans. ``findings_index.html`` lists every case of the folder with its findings JSON, linking the
PNG and the CSV. Scan, map and mask are reoriented to the previews' display orientation first
(nnscreener/inference/previews.py: anterior up and the patient's right on the left in axial slices, superior up in
coronal and sagittal ones), whatever direction the scan's file has.

Axis order: image, map and mask are SimpleITK arrays (z, y, x); spacing is (x, y, z) in mm.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnscreener.errors import ScreenerError
from nnscreener.findings.outputs import findings_files
from nnscreener.inference.input_files import output_file
from nnscreener.inference.previews import draw_overlay, map_display_range, to_display_orientation
from nnscreener.io.images import read_image

REPORT_FINDINGS = 4  # findings drawn per PNG (the table lists up to TABLE_ROWS)
TABLE_ROWS = 12
INDEX_FILE = "findings_index.html"
OUTLINE_COLOUR = "cyan"
OVERLAY_FROM_PERCENTILE = 97.0  # body scores below this percentile are not overlaid in a report


def report_file(out_dir: Union[str, Path], case: str) -> Path:
    """``{out_dir}/{case}_findings.png``."""
    return findings_files(out_dir, case)["json"].with_suffix(".png")


def _views(centre_zyx: Sequence[int], spacing_xyz: Sequence[float]) -> List[Tuple[str, tuple, float]]:
    """(name, array index, aspect) of the axial, coronal and sagittal slices through a voxel."""
    z, y, x = centre_zyx
    sx, sy, sz = spacing_xyz
    return [("axial", (z, slice(None), slice(None)), sy / sx), ("coronal", (slice(None), y, slice(None)), sz / sx),
            ("sagittal", (slice(None), slice(None), x), sz / sy)]


def report_range(map_zyx: np.ndarray, document: Mapping[str, Any]) -> Tuple[float, float]:
    """The overlay's colour range in a report: from the body's :data:`OVERLAY_FROM_PERCENTILE` (lower scores stay
    transparent, so the anatomy shows) or the threshold when lower, to the top finding's max score (or the map's)."""
    body = map_zyx[map_zyx > map_zyx.min()]
    if body.size == 0:
        return map_display_range(map_zyx)
    low = min(float(np.percentile(body, OVERLAY_FROM_PERCENTILE)), float(document["threshold"]))
    rows = document.get("findings") or []
    high = float(rows[0]["max_score"]) if rows else float(body.max())
    return low, (high if high > low else low + 1.0)


def _table_text(rows: Sequence[Mapping[str, Any]]) -> List[List[str]]:
    cells = []
    for row in rows[:TABLE_ROWS]:
        percentile = row.get("max_score_percentile_normal")
        cells.append([str(row["id"]), f"{row['volume_ml']:.2f}", f"{row['max_score']:.2f}",
                      "" if percentile is None else f"{percentile:.4f}",
                      ", ".join(f"{v:.0f}" for v in row["centroid_lps_mm"]), str(row.get("organ", ""))[:14]])
    return cells


def _draw_table(fig: Figure, grid, rows: Sequence[Mapping[str, Any]]) -> None:
    ax = fig.add_subplot(grid[:, 3])
    ax.set_axis_off()
    if not rows:
        ax.text(0.5, 0.5, "no findings above the threshold", ha="center", va="center", fontsize=12)
        return
    table = ax.table(cellText=_table_text(rows), colLabels=["#", "mL", "max", "pctl normal", "centroid LPS mm",
                                                             "organ"], loc="upper center", cellLoc="center",
                     colWidths=[0.06, 0.11, 0.13, 0.18, 0.32, 0.2])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.3)
    if len(rows) > TABLE_ROWS:
        ax.text(0.5, 0.02, f"... and {len(rows) - TABLE_ROWS} more in the CSV", ha="center", fontsize=8)


def _count(document: Mapping[str, Any]) -> str:
    """``"1 finding"``, ``"3 findings"``."""
    return f"{document['n_findings']} finding{'' if document['n_findings'] == 1 else 's'}"


def _link(name: str) -> str:
    """A file name as an HTML attribute value (URL-quoted, then escaped)."""
    return html.escape(quote(name))


def _title(case: str, document: Mapping[str, Any]) -> str:
    fpr, ml = document.get("normal_fpr_at_threshold"), document.get("normal_fp_ml_per_scan_at_threshold")
    normal = (f"; on normal scans: voxel FPR {fpr:.2g}, {ml:.3g} mL per scan" if fpr is not None and ml is not None
              else "; uncalibrated")
    return (f"{case}: {_count(document)} at {document['operating_point']} (score > "
            f"{document['threshold']:.3f} nats{normal})")


def draw_report(image_zyx: np.ndarray, map_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_xyz: Sequence[float],
                document: Mapping[str, Any], path: Union[str, Path],
                window_hu: Tuple[float, float] = (-1000.0, 300.0)) -> Path:
    """Draws a case's report PNG from its scan (HU), map (nats), findings mask and findings document (the JSON)."""
    rows = document["findings"]
    shown = rows[:REPORT_FINDINGS]
    centres = [[int(round(v)) for v in r["centroid_voxel_xyz"][::-1]] for r in shown] or [
        [int(i) for i in np.unravel_index(int(np.argmax(map_zyx)), map_zyx.shape)]]
    n_rows = len(centres)
    fig = Figure(figsize=(19, 3.6 * n_rows + 0.6))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_rows, 4, width_ratios=[1, 1, 1, 1.7])
    map_range = report_range(map_zyx, document)
    for r, centre in enumerate(centres):
        for c, (name, index, aspect) in enumerate(_views(centre, spacing_xyz)):
            ax = fig.add_subplot(grid[r, c])
            origin = "upper" if name == "axial" else "lower"
            draw_overlay(ax, image_zyx[index], map_zyx[index], aspect, origin, window_hu, map_range)
            if mask_zyx[index].any():
                ax.contour(mask_zyx[index], levels=[0.5], colors=OUTLINE_COLOUR, linewidths=0.8, origin=origin)
            label = f"finding {shown[r]['id']}" if shown else "map maximum"
            ax.set_title(f"{label}: {name}", fontsize=9)
            ax.set_axis_off()
    _draw_table(fig, grid, rows)
    fig.suptitle(_title(str(document["case"]), document), fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    return path


def centroids_on_display_grid(document: Mapping[str, Any], image: sitk.Image, shown: sitk.Image) -> Dict[str, Any]:
    """A copy of a findings document whose ``centroid_voxel_xyz`` are indices of the display grid ``shown`` (the
    scan ``image`` reoriented) instead of the scan's own, mapped through their physical point."""
    rows = []
    for row in document["findings"]:
        point = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in row["centroid_voxel_xyz"]])
        rows.append({**row, "centroid_voxel_xyz": list(shown.TransformPhysicalPointToContinuousIndex(point))})
    return {**document, "findings": rows}


def write_case_report(out_dir: Path, case: str, image_file: Union[str, Path],
                      window_hu: Tuple[float, float] = (-1000.0, 300.0)) -> Path:
    """Reads a case's scan, map and findings files from ``out_dir`` and draws its report PNG in the display
    orientation."""
    files = findings_files(out_dir, case)
    document = json.loads(files["json"].read_text())
    image = read_image(Path(image_file))
    arrays = [sitk.GetArrayFromImage(read_image(p)) for p in (output_file(out_dir, case), files["mask"])]
    if arrays[0].shape != sitk.GetArrayViewFromImage(image).shape:
        raise ScreenerError(f"case {case}: scan {image_file} and map {output_file(out_dir, case)} differ in size")
    shown, (map_zyx, mask_zyx) = to_display_orientation(image, *arrays)
    return draw_report(sitk.GetArrayFromImage(shown).astype(np.float32), map_zyx, mask_zyx, shown.GetSpacing(),
                       centroids_on_display_grid(document, image, shown), report_file(out_dir, case), window_hu)


def write_index(out_dir: Path) -> Path:
    """Writes ``findings_index.html``: every case of the folder with findings, its operating point and counts,
    its report PNG (when there is one) and links to its CSV and JSON."""
    entries = []
    for path in sorted(out_dir.glob("*_findings.json")):
        document = json.loads(path.read_text())
        case = str(document.get("case", path.name[: -len("_findings.json")]))
        png = report_file(out_dir, case)
        image = f'<br><img src="{_link(png.name)}" style="max-width:100%">' if png.is_file() else ""
        entries.append(f"<h2>{html.escape(case)}</h2><p>{_count(document)} at "
                       f"{html.escape(str(document['operating_point']))} (score &gt; {document['threshold']:.4f} "
                       f"nats) - <a href=\"{_link(path.with_suffix('.csv').name)}\">table (CSV)</a>, "
                       f"<a href=\"{_link(path.name)}\">JSON</a>{image}</p>")
    index = out_dir / INDEX_FILE
    index.write_text("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>nnScreener findings</title></head>"
                     "<body><h1>nnScreener findings</h1><p>Anomaly scores are NLL in nats; coordinates are LPS mm. "
                     "Findings are rare patterns, not diagnoses.</p>" + "\n".join(entries) + "</body></html>\n")
    return index


def write_reports(out_dir: Path, images: Mapping[str, Union[str, Path]]) -> Dict[str, str]:
    """Report PNGs of the cases in ``images`` (case -> its scan file) and the folder's index; returns case -> error
    message of reports that failed."""
    failed: Dict[str, str] = {}
    for case, image_file in sorted(images.items()):
        try:
            write_case_report(out_dir, case, image_file)
        except (ScreenerError, OSError, ValueError) as e:
            failed[case] = f"report: {e}"
    write_index(out_dir)
    return failed

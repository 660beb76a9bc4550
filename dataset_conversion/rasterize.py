"""Polygon annotations (vertices in pixels, x = column, y = row) to pixel masks."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.draw import line as draw_line


def rasterize_polygon(xs: Sequence[float], ys: Sequence[float], shape_yx: tuple[int, int],
                      include_outline: bool) -> np.ndarray:
    """Pixel mask of a closed polygon given by vertices (x = column, y = row, pixels; rounded to the nearest pixel).

    The outline is the 8-connected pixel path through consecutive vertices (closed). The region is every pixel
    enclosed by the outline (4-connected fill), with the outline pixels themselves when ``include_outline``.
    Vertices outside the slice are allowed; the mask is clipped to ``shape_yx``.

    Returns:
        bool array of shape ``shape_yx`` = (rows, columns).
    """
    cols = np.rint(np.asarray(xs, dtype=float)).astype(np.int64)
    rows = np.rint(np.asarray(ys, dtype=float)).astype(np.int64)
    mask = np.zeros(shape_yx, dtype=bool)
    if rows.size == 0:
        return mask
    r0, c0 = rows.min() - 1, cols.min() - 1  # local canvas with a one-pixel margin, so the outside is connected
    canvas = np.zeros((rows.max() - r0 + 2, cols.max() - c0 + 2), dtype=bool)
    for i in range(rows.size):
        j = (i + 1) % rows.size
        rr, cc = draw_line(rows[i] - r0, cols[i] - c0, rows[j] - r0, cols[j] - c0)
        canvas[rr, cc] = True
    region = ndimage.binary_fill_holes(canvas)
    if not include_outline:
        region &= ~canvas
    # paste the canvas into the slice, clipped to it
    top, left = max(r0, 0), max(c0, 0)
    bottom, right = min(r0 + canvas.shape[0], shape_yx[0]), min(c0 + canvas.shape[1], shape_yx[1])
    if bottom > top and right > left:
        mask[top:bottom, left:right] = region[top - r0:bottom - r0, left - c0:right - c0]
    return mask

"""The patient's body in a CT volume: everything not connected to the outside air.

Used to sample positions for training (pairs, density patches), to blank the anomaly map outside the body
and to draw negative voxels for evaluation.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def body_mask_from_hu(image_hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Boolean body mask of a CT volume in HU.

    Air is ``image_hu < threshold_hu``; air connected to the volume's in-plane border (the outside) is removed,
    so lungs, airways and bowel gas stay inside the body. Of what remains, the largest connected component is
    kept, which drops the table and other detached objects.

    Args:
        image_hu: (z, y, x) array in Hounsfield units.
        threshold_hu: HU below which a voxel counts as air.

    Returns:
        (z, y, x) bool array, True inside the body. All False for a volume without any dense voxel.
    """
    if image_hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {image_hu.shape}")
    air = image_hu < threshold_hu
    # pad the axial plane with air so the outside is one connected component touching (0, 0, 0)
    padded = np.pad(air, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    labels, _ = ndimage.label(padded)
    inside = labels[:, 1:-1, 1:-1] != labels[0, 0, 0]
    del labels, padded
    components, n = ndimage.label(inside)
    if n <= 1:
        return inside
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))

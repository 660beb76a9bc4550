import numpy as np

from nnscreener.planning.body_mask import body_mask_from_hu


def _phantom() -> np.ndarray:
    """An air-filled box with a soft-tissue ellipsoid (the body) holding an air pocket (a lung), and a
    detached dense slab below it (the table)."""
    z, y, x = np.mgrid[:12, :40, :40]
    img = np.full((12, 40, 40), -1000.0)
    body = ((y - 18) / 12.0) ** 2 + ((x - 20) / 14.0) ** 2 <= 1
    img[body] = 40.0
    lung = ((y - 16) / 4.0) ** 2 + ((x - 15) / 4.0) ** 2 <= 1
    img[lung] = -850.0
    img[:, 34:36, 5:35] = 300.0  # table, separated from the body by air
    return img, body


def test_body_keeps_inner_air_and_drops_outside_air_and_table():
    img, body = _phantom()
    mask = body_mask_from_hu(img)
    np.testing.assert_array_equal(mask, body)


def test_all_air_gives_empty_mask():
    assert not body_mask_from_hu(np.full((4, 8, 8), -1000.0)).any()

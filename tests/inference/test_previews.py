"""Preview PNGs are drawn in the display orientation, whatever direction the scan's file has."""
import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from nnscreener.inference import previews
from nnscreener.inference.previews import to_display_orientation, write_previews


def stored(array_zyx: np.ndarray, flipped: bool) -> sitk.Image:
    """The volume with identity direction, or the same physical volume with z and x reversed (direction
    diag(-1, 1, -1), origin at the other corner), as scanners and converters often write it."""
    image = sitk.GetImageFromArray(array_zyx[::-1, :, ::-1] if flipped else array_zyx)
    image.SetSpacing((1.0, 1.5, 2.0))
    if flipped:
        nz, _, nx = array_zyx.shape
        image.SetOrigin((nx - 1.0, 0.0, 2.0 * (nz - 1)))
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    return image


def _scan_and_score():
    scan = np.full((10, 16, 14), -1000.0, np.float32)
    scan[:, 3:13, 2:12] = 40.0
    scan[1:4, 4:7, 3:6] = 300.0  # asymmetric: a flip would show
    score = np.zeros(scan.shape, np.float32)
    score[:, 3:13, 2:12] = np.random.default_rng(0).random((10, 10, 10))
    score[7, 9, 8] = 5.0  # the focus voxel: z 7 (14 mm), y 9 (13.5 mm)
    return scan, score


def test_previews_of_a_flipped_scan_equal_those_of_the_same_scan_stored_plainly(tmp_path):
    scan, score = _scan_and_score()
    drawn = {}
    for flipped in (False, True):
        scan_file = tmp_path / f"scan_{flipped}.nii.gz"
        sitk.WriteImage(stored(scan, flipped), str(scan_file))
        stored_map = score[::-1, :, ::-1] if flipped else score
        paths = write_previews(scan_file, np.ascontiguousarray(stored_map), tmp_path / f"p{flipped}" / "case")
        assert [p.name for p in paths] == ["case_axial.png", "case_coronal.png"]
        drawn[flipped] = [imread(p) for p in paths]
    for plain, flipped in zip(drawn[False], drawn[True]):
        assert plain.std() > 0
        np.testing.assert_array_equal(plain, flipped)


def test_preview_titles_give_the_slice_position_in_mm_whatever_the_direction(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(previews, "_draw", lambda *args: titles.append(args[6]))
    scan, score = _scan_and_score()
    for flipped in (False, True):
        scan_file = tmp_path / f"scan_{flipped}.nii.gz"
        sitk.WriteImage(stored(scan, flipped), str(scan_file))
        stored_map = np.ascontiguousarray(score[::-1, :, ::-1] if flipped else score)
        write_previews(scan_file, stored_map, tmp_path / "case")
    assert titles == ["case: axial slice z = 14.0 mm (LPS)", "case: coronal slice y = 13.5 mm (LPS)"] * 2


def test_the_display_orientation_undoes_flips_and_axis_permutations():
    rng = np.random.default_rng(1)
    volume = rng.random((5, 6, 7)).astype(np.float32)
    plain = stored(volume, flipped=False)
    flipped = stored(volume, flipped=True)
    permuted = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(0, 2, 1)))  # index x runs along y
    permuted.SetSpacing((1.5, 1.0, 2.0))
    permuted.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    permuted.SetOrigin(plain.GetOrigin())
    for image in (plain, flipped, permuted):
        shown, (again,) = to_display_orientation(image, sitk.GetArrayFromImage(image))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(shown), volume)
        np.testing.assert_array_equal(again, volume)
        assert shown.GetSpacing() == pytest.approx((1.0, 1.5, 2.0))
        assert shown.GetDirection() == pytest.approx(np.eye(3).ravel())
    with pytest.raises(ValueError, match="grid"):
        to_display_orientation(plain, volume[:, :, :3])

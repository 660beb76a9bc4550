"""Floors: intensity-only (minus log HU density of training body voxels) and random, in the predictor's format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.evaluation import floors
from nnscreener.evaluation.floors import IntensityFloor, RandomFloor, write_floor_maps
from nnscreener.planning.body_mask import body_mask_from_hu

SHAPE = (6, 24, 26)  # (z, y, x)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a non-trivial orientation


def _phantom(rng: np.random.Generator, bone_insert: bool = False) -> np.ndarray:
    """Air around an elliptic body of soft tissue (~40 HU) with a lung (~-850 HU); optionally a 1500 HU insert."""
    zz, yy, xx = np.indices(SHAPE)
    image = np.full(SHAPE, -1000.0)
    body = ((yy - 12) / 10.0) ** 2 + ((xx - 13) / 11.0) ** 2 <= 1
    image[body] = rng.normal(40, 15, body.sum())
    lung = ((yy - 11) / 4.0) ** 2 + ((xx - 9) / 3.0) ** 2 <= 1
    image[lung] = rng.normal(-850, 20, lung.sum())
    if bone_insert:
        image[2:4, 14:17, 15:18] = 1500.0
    return image.round().astype(np.int16)


def _write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.0, 30.5, -100.0))
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def folders(tmp_path: Path):
    rng = np.random.default_rng(0)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTs").mkdir()
    train = [_phantom(rng) for _ in range(3)]
    for i, image in enumerate(train):
        _write(image, tmp_path / "imagesTr" / f"tr_{i:03d}_0000.nii.gz")
    test = {"ts_001": _phantom(rng, bone_insert=True), "ts_002": _phantom(rng)}
    for case, image in test.items():
        _write(image, tmp_path / "imagesTs" / f"{case}_0000.nii.gz")
    return tmp_path, train, test


def test_histogram_counts_every_training_body_voxel(folders):
    root, train, _ = folders
    floor = IntensityFloor.fit(sorted((root / "imagesTr").iterdir()))
    assert floor.n_images == 3
    assert floor.counts.sum() == sum(int(body_mask_from_hu(image).sum()) for image in train)
    expected = np.zeros_like(floor.counts)
    for image in train:  # explicit per-voxel binning
        for hu in image[body_mask_from_hu(image)].tolist():
            expected[min(max(int(np.floor((hu + 1024) / 5.0)), 0), floor.counts.size - 1)] += 1
    np.testing.assert_array_equal(floor.counts, expected)
    density_per_hu = np.exp(-floor.neg_log_density())
    assert np.sum(density_per_hu * floor.bin_width_hu) == pytest.approx(1.0)  # a density over HU


def test_score_is_minus_log_smoothed_density_per_voxel():
    counts = np.zeros(819, np.int64)
    counts[(40 + 1024) // 5] = 90
    counts[(-850 + 1024) // 5] = 10
    floor = IntensityFloor(counts, smoothing=1.0)
    image = np.array([[[40, -850, 1500], [5000, -3000, 37]]], np.int16)  # (1, 2, 3); 37 shares [36, 41) with 40
    total = 100 + 819
    expected = -np.log(np.array([[[91, 11, 1], [1, 1, 91]]]) / total / 5.0)  # 5000 / -3000 go to the end bins
    np.testing.assert_allclose(floor.score(image), expected, rtol=1e-6)
    assert floor.score(image).dtype == np.float32


def test_intensity_floor_scores_unseen_hu_high(folders):
    root, _, test = folders
    floor = IntensityFloor.fit(sorted((root / "imagesTr").iterdir()))
    image = test["ts_001"]
    scores = floor.score(image)
    insert = image == 1500
    body = body_mask_from_hu(image)
    assert scores[insert].min() > scores[body & ~insert].max()
    assert np.median(scores[body & ~insert]) < scores[insert].min() - 3.0  # nats per HU


def test_random_floor_is_seeded_per_case():
    image = np.zeros(SHAPE, np.int16)
    a = RandomFloor(seed=1).score(image, "x")
    np.testing.assert_array_equal(a, RandomFloor(seed=1).score(image, "x"))
    assert not np.array_equal(a, RandomFloor(seed=2).score(image, "x"))
    assert not np.array_equal(a, RandomFloor(seed=1).score(image, "y"))
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() < 1.0


@pytest.mark.parametrize("kind", ["intensity", "random"])
def test_written_maps_have_the_input_geometry_and_the_minimum_outside_the_body(folders, kind):
    root, _, test = folders
    outputs = write_floor_maps(kind, root / "imagesTs", root / kind, train_images=root / "imagesTr")
    assert sorted(outputs) == ["ts_001", "ts_002"]
    for case, path in outputs.items():
        assert path == root / kind / f"{case}.nii.gz"
        written = sitk.ReadImage(str(path))
        reference = sitk.ReadImage(str(root / "imagesTs" / f"{case}_0000.nii.gz"))
        assert written.GetSize() == reference.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing())
        np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin())
        np.testing.assert_allclose(written.GetDirection(), DIRECTION)
        assert written.GetPixelID() == sitk.sitkFloat32
        values = sitk.GetArrayFromImage(written)
        body = body_mask_from_hu(test[case])
        assert np.all(values[~body] == values[body].min())
    assert json.loads((root / kind / "floor.json").read_text())["kind"] == kind


def test_existing_maps_are_kept_unless_overwrite(folders):
    root, _, _ = folders
    out = root / "random"
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(write_floor_maps("random", root / "imagesTs", out,
                                                                       seed=0)["ts_002"])))
    write_floor_maps("random", root / "imagesTs", out, seed=5)
    kept = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ts_002.nii.gz")))
    np.testing.assert_array_equal(first, kept)
    write_floor_maps("random", {"ts_002": root / "imagesTs" / "ts_002_0000.nii.gz"}, out, seed=5, overwrite=True)
    assert not np.array_equal(first, sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ts_002.nii.gz"))))


def test_bad_floor_arguments(folders):
    root, _, _ = folders
    with pytest.raises(ScreenerError, match="unknown floor 'median'"):
        write_floor_maps("median", root / "imagesTs", root / "out")
    with pytest.raises(ScreenerError, match="needs training images"):
        write_floor_maps("intensity", root / "imagesTs", root / "out")
    with pytest.raises(ScreenerError, match="does not exist"):
        write_floor_maps("intensity", root / "imagesTs", root / "out", train_images=root / "missing")
    with pytest.raises(ScreenerError, match="invalid HU bins"):
        IntensityFloor.fit([root / "imagesTr" / "tr_000_0000.nii.gz"], bin_width_hu=0)


def test_training_files_can_be_thinned(folders):
    root, _, _ = folders
    files = floors.training_image_files(root / "imagesTr", max_images=2)
    assert [f.name for f in files] == ["tr_000_0000.nii.gz", "tr_002_0000.nii.gz"]


def test_module_cli(folders, capsys):
    root, _, _ = folders
    assert floors.main(["intensity", "-i", str(root / "imagesTs"), "-o", str(root / "cli"),
                        "-tr", str(root / "imagesTr"), "--bin_width_hu", "1"]) == 0
    assert (root / "cli" / "ts_001.nii.gz").is_file() and "2 intensity floor maps" in capsys.readouterr().out
    assert json.loads((root / "cli" / "floor.json").read_text())["bin_width_hu"] == 1.0
    assert floors.main(["intensity", "-i", str(root / "imagesTs"), "-o", str(root / "cli2")]) == 1
    assert "needs training images" in capsys.readouterr().err

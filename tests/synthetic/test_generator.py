"""Synthetic CT generator: determinism, anatomy HU, lesions, the nnU-Net raw dataset, the CLI, and that a
pure-intensity detector is weak on it."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from nnscreener.synthetic import render as render_module
from nnscreener.synthetic.lesions import LESION_KINDS, LUNG_TISSUES
from nnscreener.synthetic.patient import VolumeGeometry
from nnscreener.synthetic.raster import SmoothField, Tubes, tube_fraction
from nnscreener.synthetic.tissues import Tissue
from nnscreener.synthetic.generator import generate_case, generate_dataset, generate_labelled_dataset
from nnscreener.cli.generate_synthetic import main as cli_main
from nnscreener.errors import ScreenerError
from nnscreener.planning.body_mask import body_mask_from_hu

Case = Tuple[np.ndarray, np.ndarray, Tuple[float, float, float], Dict]
T = Tissue


@pytest.fixture(scope="module")
def cases_by_kind() -> Dict[int, Case]:
    """One lesioned case per lesion kind (the kind is required), with tissue maps."""
    return {
        kind: generate_case(np.random.SeedSequence(11, spawn_key=(1, kind)), "cpu", True, [kind],
                            return_tissue_map=True)
        for kind in LESION_KINDS
    }


@pytest.fixture(scope="module")
def training_cases() -> List[Case]:
    """Training-like cases: lesion-free except one, as in an uncurated training set."""
    return [generate_case(np.random.SeedSequence(12, spawn_key=(0, i)), "cpu", i == 0) for i in range(5)]


# ---------------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_case_and_different_seed_different_case(cases_by_kind):
    image, label, spacing, info = cases_by_kind[1]
    again = generate_case(np.random.SeedSequence(11, spawn_key=(1, 1)), "cpu", True, [1])
    np.testing.assert_array_equal(again[0], image)
    np.testing.assert_array_equal(again[1], label)
    assert again[2] == spacing and again[3]["origin_xyz"] == info["origin_xyz"]
    other = generate_case(np.random.SeedSequence(11, spawn_key=(1, 99)), "cpu", True, [1])
    assert other[0].shape != image.shape or not np.array_equal(other[0], image)


def test_int_seed_is_accepted_and_deterministic():
    a = generate_case(5, "cpu", with_lesions=False)
    b = generate_case(5, "cpu", with_lesions=False)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].dtype == np.int16 and a[1].dtype == np.uint8
    assert not a[1].any() and a[3]["lesions"] == []


def test_slab_rendering_matches_whole_volume_rendering(monkeypatch, cases_by_kind):
    """Rendering in many thin slabs (blur halos, texture per slab) must match one slab, noise aside."""
    from nnscreener.synthetic import generator as synthetic_ct

    captured = {}
    original = render_module.render

    def capture(phantom, with_tissue=False):
        quiet = replace(phantom, acquisition=replace(phantom.acquisition, noise_sd_hu=0.0))
        captured["phantom"] = quiet
        return original(quiet, with_tissue)

    monkeypatch.setattr(synthetic_ct, "render", capture)
    synthetic_ct.generate_case(np.random.SeedSequence(11, spawn_key=(1, 3)), "cpu", True, [3])
    phantom = captured["phantom"]
    whole_image, whole_label, whole_tissue = original(phantom, with_tissue=True)
    ny, nx = phantom.acquisition.geometry.shape_zyx[1:]
    monkeypatch.setattr(render_module, "SLAB_VOXELS", 7 * ny * nx)  # slabs of 7 slices
    slab_image, slab_label, slab_tissue = original(phantom, with_tissue=True)
    np.testing.assert_array_equal(slab_label, whole_label)
    np.testing.assert_array_equal(slab_tissue, whole_tissue)
    assert np.abs(slab_image.astype(int) - whole_image).max() <= 1  # float summation order only


# ------------------------------------------------------------------------------------------ rasterising helpers
def _geometry(shape=(20, 24, 28), spacing=(3.0, 2.0, 2.5)) -> VolumeGeometry:
    return VolumeGeometry(shape, spacing, (0.0, 0.0, 0.0))


def test_thin_tube_splat_keeps_the_tube_volume():
    g = _geometry()
    tube = Tubes(np.array([[10.0, 12.0, 15.0]], np.float32), np.array([[50.0, 30.0, 40.0]], np.float32),
                 np.array([0.8], np.float32))  # radius far below the voxel size
    f, (sz, sy, sx) = tube_fraction(tube, g, 0, g.shape_zyx[0])
    voxel = float(np.prod(g.spacing_zyx))
    length = float(np.linalg.norm(tube.end - tube.start))
    assert f.sum() * voxel == pytest.approx(math.pi * 0.8**2 * length, rel=1e-3)
    assert f.max() < 0.5  # partial volume, not a filled voxel


def test_thick_tube_is_full_inside_and_empty_outside():
    g = _geometry()
    tube = Tubes(np.array([[10.0, 24.0, 5.0]], np.float32), np.array([[60.0, 24.0, 5.0]], np.float32),
                 np.array([8.0], np.float32))
    f, (sz, sy, sx) = tube_fraction(tube, g, 0, g.shape_zyx[0])
    full = np.zeros(g.shape_zyx, np.float32)
    full[sz, sy, sx] = f
    # slow reference: distance of every voxel centre to the segment
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(g.shape_zyx, g.spacing_zyx)), indexing="ij")
    t = np.clip((x - 10.0) / 50.0, 0.0, 1.0)
    d = np.sqrt((x - 10.0 - 50.0 * t) ** 2 + (y - 24.0) ** 2 + (z - 5.0) ** 2)
    edge = 0.5 * (g.spacing_zyx[1] + g.spacing_zyx[2])
    np.testing.assert_allclose(full, np.clip(0.5 + (8.0 - d) / edge, 0.0, 1.0), atol=1e-5)


def test_smooth_field_matches_direct_gaussian_interpolation():
    rng = np.random.default_rng(0)
    field = SmoothField(np.zeros(3), np.array([12.0, 10.0, 8.0]), 3.0, rng)
    xs, ys, zs = np.array([0.0, 5.5, 12.0]), np.array([1.0, 9.0]), np.array([0.5, 4.0, 8.0])
    fast = field.sample(zs, ys, xs)
    lattice = [field.origin[a] + field.sigma * np.arange(field.values.shape[2 - a]) for a in range(3)]

    def weights(c, a):
        w = np.exp(-0.5 * ((c - lattice[a]) / field.sigma) ** 2) * (np.abs(c - lattice[a]) <= 4.0 * field.sigma)
        return w / np.sqrt((w**2).sum())

    for i, z in enumerate(zs):
        for j, y in enumerate(ys):
            for k, x in enumerate(xs):
                slow = np.einsum("a,b,c,abc->", weights(z, 2), weights(y, 1), weights(x, 0), field.values)
                assert fast[i, j, k] == pytest.approx(slow, abs=1e-5)
    assert fast.std() < 3.0  # unit variance by construction, not exploding


# -------------------------------------------------------------------------------------------------- anatomy
def _interior(mask: np.ndarray) -> np.ndarray:
    """Voxels whose in-plane 3 x 3 neighbourhood has the same tissue (away from partial volume)."""
    return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))


@pytest.mark.parametrize(
    "tissues, lo, hi",
    [
        ((T.AIR,), -1030, -950),
        ((T.LUNG,), -900, -700),
        ((T.FAT, T.VISCERAL_FAT), -120, -80),
        ((T.MUSCLE,), 20, 80),
        ((T.CANCELLOUS_BONE, T.CORTICAL_BONE), 200, 1500),
        ((T.SPINAL_CANAL,), -20, 80),
    ],
)
def test_tissue_hu_ranges(cases_by_kind, tissues, lo, hi):
    checked = 0
    for image, label, _, info in cases_by_kind.values():
        mask = _interior(np.isin(info["tissue_map"], tissues)) & (label == 0)
        if mask.sum() < 20:
            continue
        median = float(np.median(image[mask]))
        assert lo <= median <= hi, f"{[t.name for t in tissues]}: median {median} HU outside [{lo}, {hi}]"
        checked += 1
    assert checked >= 3


def test_contrast_phase_sets_blood_and_liver_hu(cases_by_kind):
    phases = set()
    for image, label, _, info in cases_by_kind.values():
        tissue = info["tissue_map"]
        aorta = _interior(tissue == T.ARTERIAL_BLOOD)
        if aorta.sum() < 20:
            continue
        blood = float(np.median(image[aorta]))
        if info["phase"] == "unenhanced":
            assert 10 <= blood <= 80
        else:
            assert blood >= 120
        liver = _interior(tissue == T.LIVER) & (label == 0)
        if liver.sum() > 50:
            assert (40 if info["phase"] == "unenhanced" else 55) <= float(np.median(image[liver])) <= 140
        phases.add(info["phase"])
    assert phases


def test_body_and_table_are_separate_and_outside_air_is_air(cases_by_kind):
    for image, label, _, info in cases_by_kind.values():
        tissue = info["tissue_map"]
        body = body_mask_from_hu(image)
        table = np.isin(tissue, (T.TABLE_SHELL, T.TABLE_CORE, T.PAD))
        assert not (body & table).any()
        organs = np.isin(tissue, (T.LUNG, T.LIVER, T.MUSCLE, T.CANCELLOUS_BONE))
        assert body[organs].mean() > 0.99
        assert image[0, 0, 0] < -900  # corner of the field of view is air


# -------------------------------------------------------------------------------------------------- lesions
HOSTS = {
    1: LUNG_TISSUES,
    2: LUNG_TISSUES,
    3: {T.LIVER, T.VENOUS_BLOOD},
    4: {T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.VISCERAL_FAT},
    5: {T.CANCELLOUS_BONE, T.CORTICAL_BONE},
    6: LUNG_TISSUES | {T.VISCERAL_FAT, T.BOWEL_WALL, T.BOWEL_FLUID, T.BOWEL_GAS, T.FECES, T.LIVER},
}


def test_every_kind_present_inside_the_body_and_in_its_organ(cases_by_kind):
    for kind, (image, label, _, info) in cases_by_kind.items():
        assert (label == kind).any(), f"required {LESION_KINDS[kind]} missing"
        assert info["lesion_voxels"][LESION_KINDS[kind]] == int((label == kind).sum())
        body = body_mask_from_hu(image)
        assert not (label.astype(bool) & ~body).any(), f"{LESION_KINDS[kind]} case: lesion voxels outside the body"
        for k in np.unique(label[label > 0]):
            assert np.isin(info["tissue_map"][label == k], list(HOSTS[int(k)])).all()


def test_lesion_attenuation_is_anatomically_plausible(cases_by_kind):
    def median_hu(kind):
        image, label, _, info = cases_by_kind[kind]
        core = ndimage.binary_erosion(label == kind, structure=np.ones((1, 3, 3), bool))
        mask = core if core.sum() >= 3 else label == kind
        return float(np.median(image[mask])), image, label, info

    nodule, *_ = median_hu(1)
    assert -350 <= nodule <= 150  # soft tissue in lung (partial volume at its rim)
    ggo, *_ = median_hu(2)
    assert -780 <= ggo <= -350
    liver_lesion, image, label, info = median_hu(3)
    liver = _interior(info["tissue_map"] == T.LIVER) & (label == 0)
    assert 8 <= float(np.median(image[liver])) - liver_lesion <= 55  # hypodense, 20-40 HU below liver
    lytic, image, label, info = median_hu(5)
    bone = _interior(info["tissue_map"] == T.CANCELLOUS_BONE) & (label == 0)
    assert lytic < float(np.median(image[bone]))
    air, *_ = median_hu(6)
    assert air < -850


def test_training_case_without_lesions_has_empty_label(training_cases):
    for image, label, _, info in training_cases[1:]:
        assert not label.any() and info["lesions"] == []
    assert training_cases[0][1].any()


# ---------------------------------------------------------------------------------- intensity-only baseline
def test_intensity_histogram_detector_is_weak(cases_by_kind, training_cases):
    """Minus log of the global HU density of training body voxels, as a voxel score on the test cases."""
    edges = np.arange(-1024, 3082, 10)
    counts = np.zeros(len(edges) - 1)
    for image, *_ in training_cases:
        counts += np.histogram(image[body_mask_from_hu(image)], bins=edges)[0]
    density = (counts + 1.0) / (counts.sum() + len(counts))
    scores, targets = [], []
    for image, label, _, _ in cases_by_kind.values():
        body = body_mask_from_hu(image)
        bins = np.clip(np.digitize(image[body], edges) - 1, 0, len(density) - 1)
        scores.append(-np.log(density[bins]))
        targets.append(label[body] > 0)
    auroc = roc_auc_score(np.concatenate(targets), np.concatenate(scores))
    print(f"intensity-only voxel AUROC on the synthetic test cases: {auroc:.3f}")
    assert auroc < 0.9


# ---------------------------------------------------------------------------------------------- the dataset
def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def test_dataset_is_valid_nnunet_raw_and_matches_the_case_list(nnunet_env):
    raw = nnunet_env["nnUNet_raw"]
    folder = generate_dataset(raw, dataset_id=501, name="Tiny", n_train=3, n_test=2, seed=3, lesion_share=0.34,
                              num_processes=1, progress=False)
    assert folder == raw / "Dataset501_Tiny"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_Tiny"]  # no staging leftovers
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTs",
                                                       "synthetic_cases.json"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 3
    assert meta["labels"] == {"background": 0, **{v: int(k) for k, v in meta["lesion_kinds"].items()}}
    assert sorted(meta["labels"].values()) == list(range(7))
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"train_{i:04d}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"test_{i:04d}_0000.nii.gz" for i in range(2)]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == [f"test_{i:04d}.nii.gz" for i in range(2)]

    cases = {c["case"]: c for c in json.loads((folder / "synthetic_cases.json").read_text())["cases"]}
    assert sum(bool(cases[f"train_{i:04d}"]["lesions"]) for i in range(3)) == 1  # round(0.34 * 3)
    for name, case in cases.items():
        sub = "imagesTr" if case["split"] == "train" else "imagesTs"
        image = _read(folder / sub / f"{name}_0000.nii.gz")
        assert image.GetPixelID() == sitk.sitkInt16
        # ITK speaks (x, y, z); the case list and arrays speak (z, y, x)
        assert image.GetSize() == tuple(case["shape_zyx"][::-1])
        np.testing.assert_allclose(image.GetSpacing(), case["spacing_zyx"][::-1], rtol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), case["origin_xyz"], atol=1e-4)
        assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        if case["split"] == "test":
            label = _read(folder / "labelsTs" / f"{name}.nii.gz")
            assert label.GetPixelID() == sitk.sitkUInt8
            for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
                assert getattr(label, attr)() == getattr(image, attr)()
            values = sitk.GetArrayFromImage(label)
            assert values.max() >= 1 and set(np.unique(values)) <= set(range(7))

    # the test case equals generate_case with the documented seed
    image, label, spacing, _ = generate_case(np.random.SeedSequence(3, spawn_key=(1, 1)), "cpu", True, [2])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(_read(folder / "imagesTs" / "test_0001_0000.nii.gz")), image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(_read(folder / "labelsTs" / "test_0001.nii.gz")), label)

    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    assert maybe_convert_to_dataset_name(501) == "Dataset501_Tiny"

    # existing dataset: refused without overwrite, replaced with it
    with pytest.raises(ScreenerError, match="already exists"):
        generate_dataset(raw, dataset_id=501, name="Tiny", n_train=1, n_test=0, num_processes=1, progress=False)
    generate_dataset(raw, dataset_id=501, name="Tiny", n_train=1, n_test=0, num_processes=1, progress=False,
                     overwrite=True)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    assert not list((folder / "imagesTs").iterdir())
    with pytest.raises(ScreenerError, match="already used by Dataset501_Tiny"):
        generate_dataset(raw, dataset_id=501, name="Other", n_train=1, n_test=0, num_processes=1, progress=False)


def test_labelled_dataset_passes_nnunets_integrity_check_with_binary_lesion_labels(nnunet_env):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = nnunet_env["nnUNet_raw"]
    folder = generate_labelled_dataset(raw, dataset_id=502, n_labelled=2, n_test=1, seed=5, num_processes=1,
                                       progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr",
                                                       "labelsTs", "synthetic_cases.json"]
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "lesion": 1}
    verify_dataset_integrity(str(folder), num_processes=1)  # nnU-Net's own check of a supervised raw dataset
    cases = {c["case"]: c for c in json.loads((folder / "synthetic_cases.json").read_text())["cases"]}
    assert sorted(cases) == ["case_0000", "case_0001", "test_0000"]
    for name, sub in (("case_0000", "Tr"), ("case_0001", "Tr"), ("test_0000", "Ts")):
        label = sitk.GetArrayFromImage(_read(folder / f"labels{sub}" / f"{name}.nii.gz"))
        assert set(np.unique(label)) == {0, 1}
        assert sorted(LESION_KINDS)[int(name[-1])] in {les["label"] for les in cases[name]["lesions"]}  # kind i+1
    # other random streams than the unlabeled dataset's: the first labelled case is not train_0000 or test_0000
    image = sitk.GetArrayFromImage(_read(folder / "imagesTr" / "case_0000_0000.nii.gz"))
    for key in ((0, 0), (1, 0)):
        other, *_ = generate_case(np.random.SeedSequence(5, spawn_key=key), "cpu", True, [1])
        assert other.shape != image.shape or not np.array_equal(other, image)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test": -1}, "n_test"),
        ({"size": "huge"}, "unknown size"),
        ({"lesion_share": 1.5}, "lesion_share"),
        ({"dataset_id": 1000}, "outside nnU-Net's range"),
        ({"name": "my data"}, "dataset name"),
        ({"num_processes": 0}, "num_processes"),
    ],
)
def test_bad_arguments_are_refused_before_writing(nnunet_env, kwargs, message):
    raw = nnunet_env["nnUNet_raw"]
    with pytest.raises(ScreenerError, match=message):
        generate_dataset(raw, **{"n_train": 1, "n_test": 0, "progress": False, **kwargs})
    assert not list(raw.iterdir())


def test_missing_raw_folder_is_refused(tmp_path):
    with pytest.raises(ScreenerError, match="does not exist"):
        generate_dataset(tmp_path / "nowhere", n_train=1, n_test=0, progress=False)


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_without_nnunet_raw_prints_an_error_without_traceback(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["-d", "502", "-n_train", "1", "-n_test", "0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "nnUNet_raw is not set" in err and "Traceback" not in err


def test_cli_writes_the_dataset_and_refuses_to_overwrite_it(nnunet_env, capsys):
    cli_main(["-d", "502", "-n_train", "1", "-n_test", "1", "-np", "1", "--seed", "4"])
    folder = nnunet_env["nnUNet_raw"] / "Dataset502_SyntheticCT"
    assert (folder / "imagesTr" / "train_0000_0000.nii.gz").is_file()
    assert (folder / "labelsTs" / "test_0000.nii.gz").is_file()
    assert str(folder) in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["-d", "502", "-n_train", "1", "-n_test", "0", "-np", "1"])
    assert exit_info.value.code == 1
    assert "--overwrite" in capsys.readouterr().err

import blosc2
import numpy as np
import pytest
import torch

from nnscreener.data.baseline_loaders import make_patch_loader
from nnscreener.data.loaders import make_density_loader, make_ssl_loader, patch_origin
from nnscreener.errors import ScreenerError
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

CASES = ["case_000", "case_001", "case_002"]
NO_AUGMENTATION = {"ssl": {"augmentation": {"p_blur_or_sharpen": 0, "p_noise": 0, "p_brightness": 0,
                                            "p_contrast": 0, "p_gamma": 0}}}


@pytest.fixture
def plans(nnunet_env):
    return make_fake_preprocessed_dataset(nnunet_env, shape_zyx=(40, 64, 64))


def read_case(plans, case):
    data = blosc2.open(urlpath=str(plans.data_dir / f"{case}.b2nd"), mode="r")[:]
    seg = blosc2.open(urlpath=str(plans.data_dir / f"{case}_seg.b2nd"), mode="r")[:]
    return data, seg


def gather(views, idx):
    """(B, n) values of (B, 1, Z, Y, X) views at (B, n, 3) indices."""
    b = torch.arange(views.shape[0])[:, None]
    return views[b, 0, idx[..., 0], idx[..., 1], idx[..., 2]]


def test_ssl_batches_follow_contract_c7(plans):
    cfg = plans.config
    patch, n, bs = cfg.network.patch_size_zyx, cfg.ssl.n_pairs_per_image, cfg.ssl.batch_size
    loader = make_ssl_loader(plans.with_overrides(NO_AUGMENTATION), CASES, masking=False, num_workers=0, seed=0)
    zero_share = []
    for _ in range(3):
        batch = next(loader)
        for k in ("view1", "view2", "mask1", "mask2"):
            assert batch[k].shape == (bs, 1, *patch) and batch[k].dtype == torch.float32
        for k in ("idx1", "idx2"):
            assert batch[k].shape == (bs, n, 3) and batch[k].dtype == torch.int64
            assert (batch[k] >= 0).all() and (batch[k] < torch.tensor(patch)).all()
        assert torch.equal(batch["mask1"], torch.ones_like(batch["mask1"]))
        for v in ("view1", "view2"):
            assert batch[v].min() >= 0 and batch[v].max() <= 1  # no augmentation: the stored [0, 1] intensities
        # the phantom is 0 outside the body and >= 0.3 inside. The coarser view's voxel of each pair has a body
        # voxel nearest (value >= 0.3 / 8); the finer one may lie up to half its voxel off, across the boundary.
        seen1, seen2 = gather(batch["view1"], batch["idx1"]), gather(batch["view2"], batch["idx2"])
        assert (torch.maximum(seen1, seen2) > 0.03).all()
        assert (seen1 > 0.03).float().mean() > 0.99 and (seen2 > 0.03).float().mean() > 0.99
        zero_share.append((batch["view1"] == 0).float().mean().item())
    assert max(zero_share) > 0.01  # the views do contain outside-body voxels that the positions avoided


def test_ssl_masking_zeroes_60_percent_of_the_blocks(plans):
    loader = make_ssl_loader(plans, CASES, masking=True, num_workers=0, seed=1)
    shares = []
    for _ in range(4):
        batch = next(loader)
        for k in ("1", "2"):
            view, mask = batch["view" + k], batch["mask" + k]
            assert (view[mask == 0] == 0).all()
            shares += [(m == 0).float().mean().item() for m in mask]
    assert set(np.round(shares, 5)) <= {0.0, round(38 / 64, 5)}
    assert sum(s > 0 for s in shares) >= 0.7 * len(shares)  # masked with probability 0.9


def test_ssl_same_seed_same_batches_and_augmentation_changes_views(plans):
    a = next(make_ssl_loader(plans, CASES, masking=False, num_workers=0, seed=3))
    b = next(make_ssl_loader(plans, CASES, masking=False, num_workers=0, seed=3))
    c = next(make_ssl_loader(plans.with_overrides(NO_AUGMENTATION), CASES, masking=False, num_workers=0, seed=3))
    for k in ("view1", "view2", "idx1", "idx2"):
        assert torch.equal(a[k], b[k])
    assert a["keys"] == c["keys"] and not torch.equal(a["view1"], c["view1"])


def test_a_loader_with_one_worker_yields_batches(plans):
    loader = make_ssl_loader(plans, CASES, masking=True, num_workers=1, seed=0)
    try:
        batches = [next(loader) for _ in range(2)]
    finally:
        loader._finish()
    assert all(b["view1"].shape == (plans.config.ssl.batch_size, 1, *plans.config.network.patch_size_zyx)
               for b in batches)
    assert not torch.equal(batches[0]["view1"], batches[1]["view1"])


def test_density_patches_are_crops_of_the_volume_at_their_origin(plans):
    cfg = plans.config
    patch, bs = cfg.network.patch_size_zyx, cfg.density.batch_size
    loader = make_density_loader(plans, CASES, num_workers=0, seed=0)
    for _ in range(3):
        batch = next(loader)
        assert batch["image"].shape == (bs, cfg.preprocessing.channels, *patch)  # the window too where it is kept
        assert batch["image"].dtype == torch.float32
        assert batch["origin_zyx"].shape == (bs, 3) and batch["origin_zyx"].dtype == torch.int64
        for image, origin, case in zip(batch["image"], batch["origin_zyx"].tolist(), batch["keys"]):
            data, seg = read_case(plans, case)
            z, y, x = origin
            assert all(0 <= o <= s - p for o, s, p in zip(origin, data.shape[1:], patch))
            np.testing.assert_array_equal(image.numpy(), data[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]])
            assert (seg[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]] > 0).any()


def test_density_pads_volumes_smaller_than_the_patch(nnunet_env):
    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=991, n_cases=2, shape_zyx=(20, 30, 30))
    patch = plans.config.network.patch_size_zyx
    batch = next(make_density_loader(plans, ["case_000", "case_001"], num_workers=0, seed=0))
    for image, origin, case in zip(batch["image"], batch["origin_zyx"].tolist(), batch["keys"]):
        data, _ = read_case(plans, case)
        assert all(s - p <= o <= 0 for o, s, p in zip(origin, data.shape[1:], patch))
        z, y, x = (-o for o in origin)
        inner = image[:, z:z + 20, y:y + 30, x:x + 30].numpy()
        np.testing.assert_array_equal(inner, data)
        assert image.sum().item() == pytest.approx(float(data.sum()), rel=1e-5)  # zero padding elsewhere


def test_a_kept_window_channel_reaches_the_density_batches_but_not_the_ssl_views(nnunet_env):
    """preprocessing.keep_window_channel (docs/design.md C3): SSL views hold channel 0 only (C7), density patches every
    channel (C8), the baselines' patches channel 0 (C12)."""
    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=992, shape_zyx=(40, 64, 64), window_channel=True)
    patch = plans.config.network.patch_size_zyx
    ssl = next(make_ssl_loader(plans.with_overrides(NO_AUGMENTATION), CASES, masking=True, num_workers=0, seed=0))
    for k in ("view1", "view2", "mask1", "mask2"):
        assert ssl[k].shape == (plans.config.ssl.batch_size, 1, *patch)
    density = next(make_density_loader(plans, CASES, num_workers=0, seed=0))
    assert density["image"].shape == (plans.config.density.batch_size, 2, *patch)
    for image, origin, case in zip(density["image"], density["origin_zyx"].tolist(), density["keys"]):
        data, _ = read_case(plans, case)
        z, y, x = origin
        np.testing.assert_array_equal(image.numpy(), data[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]])
        np.testing.assert_allclose(image[1].numpy(), image[0].numpy() ** 2, rtol=1e-6)
    baseline = next(make_patch_loader(plans, CASES, batch_size=2, num_workers=0, seed=0))
    assert baseline["image"].shape == (2, 1, *patch)
    for image, origin, case in zip(baseline["image"], baseline["origin_zyx"].tolist(), baseline["keys"]):
        data, _ = read_case(plans, case)
        z, y, x = origin
        np.testing.assert_array_equal(image.numpy(), data[:1, z:z + patch[0], y:y + patch[1], x:x + patch[2]])


def test_patch_origin_centres_then_shifts_inside():
    assert patch_origin((20, 20, 20), (100, 100, 100), (10, 10, 10)) == (15, 15, 15)
    assert patch_origin((2, 97, 50), (100, 100, 100), (10, 10, 10)) == (0, 90, 45)
    assert patch_origin((3, 3, 3), (6, 6, 6), (10, 10, 10)) == (-2, -2, -2)
    assert patch_origin((0, 5, 5), (6, 6, 6), (10, 10, 10)) == (-4, 0, 0)


def test_bad_inputs_raise(plans):
    with pytest.raises(ScreenerError, match="missing preprocessed files"):
        make_ssl_loader(plans, ["case_000", "no_such_case"], masking=False, num_workers=0, seed=0)
    with pytest.raises(ScreenerError, match="no training cases"):
        make_density_loader(plans, [], num_workers=0, seed=0)
    with pytest.raises(ScreenerError, match="num_workers"):
        make_ssl_loader(plans, CASES, masking=False, num_workers=-1, seed=0)

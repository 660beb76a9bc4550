"""Descriptor / condition trainers and the shared base: loss wiring, schedule, NaN guard, checkpoints."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.fake_dataset import make_fake_preprocessed_dataset
from nnscreener.checkpoints import load_checkpoint
from nnscreener.trainers.run import resolved_plans_dict
from nnscreener.config import merge, parse_set_overrides
from nnscreener.errors import ScreenerError
from nnscreener.trainers.base import NonFiniteLossError
from nnscreener.trainers.schedule import warmup_then_linear_decay
from nnscreener.trainers.ssl import ConditionTrainer, DescriptorTrainer, ssl_health

TINY = ["network.patch_size_xyz=16,16,8", "ssl.batch_size=1", "ssl.n_pairs_per_image=32",
        "ssl.vicreg_expander_dims=32,32", "ssl.infonce_projector_dims=32,16", "ssl.warmup_iterations=4",
        "ssl.num_iterations=8", "ssl.learning_rate=1e-3"]


@pytest.fixture
def plans(nnunet_env):
    return make_fake_preprocessed_dataset(nnunet_env, n_cases=1, shape_zyx=(16, 24, 24))


def make_trainer(cls, plans, extra=()):
    config = merge(plans.config, parse_set_overrides(TINY + list(extra)))
    trainer = cls(plans=resolved_plans_dict(plans, config, False), configuration="3d_fullres", fold="all",
                  dataset_json=plans.dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def batch_of(views, idx1, idx2, masks=None):
    ones = torch.ones_like(views[0])
    m1, m2 = masks if masks is not None else (ones, ones)
    return {"view1": views[0], "view2": views[1], "mask1": m1, "mask2": m2, "idx1": idx1, "idx2": idx2}


def random_idx(n, shape_zyx, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, s, (1, n), generator=g) for s in shape_zyx], dim=-1)  # (1, n, 3)


def test_stage_folder_and_variant(plans, nnunet_env):
    trainer = make_trainer(DescriptorTrainer, plans, ["network.embedding_dim=16", "ssl.objective=infonce"])
    assert trainer.output_folder == str(nnunet_env["nnUNet_results"] / "Dataset990_Fake" /
                                        "descriptor__infonce_d16__nnScreenerPlans_cpu")
    assert not (nnunet_env["nnUNet_results"] / "Dataset990_Fake" /
                "DescriptorTrainer__nnScreenerPlans_cpu__3d_fullres").exists()
    assert trainer.num_epochs == 8 // plans.config.ssl.log_every + (8 % plans.config.ssl.log_every > 0)


def test_identical_views_give_zero_invariance_and_pairing_matters(plans):
    """Features are read at the paired voxels: identical views at identical indices embed identically."""
    trainer = make_trainer(DescriptorTrainer, plans)
    trainer.network.eval()
    view = torch.rand(1, 1, 8, 16, 16)
    idx = random_idx(32, (8, 16, 16), seed=0)
    _, same = trainer.compute_loss(batch_of((view, view.clone()), idx, idx.clone()))
    assert same["loss/invariance"] == pytest.approx(0.0, abs=1e-10)
    assert same["health/cos_positive"] == pytest.approx(1.0, abs=1e-5)
    _, shifted = trainer.compute_loss(batch_of((view, view.clone()), idx, random_idx(32, (8, 16, 16), seed=1)))
    assert shifted["loss/invariance"] > 1e-4
    assert set(same) >= {"loss/variance", "loss/covariance", "health/embedding_std", "health/cos_random"}


def test_condition_input_is_masked_view_and_mask(plans):
    trainer = make_trainer(ConditionTrainer, plans)
    assert trainer.network.in_channels == 2
    view = torch.rand(1, 1, 8, 16, 16)
    mask = (torch.rand(1, 1, 8, 16, 16) > 0.5).float()
    x = trainer.network_input(view, mask)
    torch.testing.assert_close(x, torch.cat([view * mask, mask], dim=1))
    loss, logged = trainer.compute_loss(batch_of((view * mask, view), random_idx(8, (8, 16, 16), 0),
                                                 random_idx(8, (8, 16, 16), 0), masks=(mask, torch.ones_like(mask))))
    assert torch.isfinite(loss) and "loss/invariance" in logged


def test_infonce_objective_logs_its_term(plans):
    trainer = make_trainer(ConditionTrainer, plans, ["ssl.objective=infonce"])
    view = torch.rand(1, 1, 8, 16, 16)
    idx = random_idx(16, (8, 16, 16), 0)
    loss, logged = trainer.compute_loss(batch_of((view, view), idx, idx))
    assert float(loss.detach()) == pytest.approx(logged["loss/infonce"])
    assert trainer.extra_modules["ssl_head"].out_dim == 16


def test_schedule_warms_up_from_zero_then_decays_to_zero():
    f = warmup_then_linear_decay(4, 12)
    assert [f(s) for s in (0, 2, 4, 8, 12, 20)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    assert warmup_then_linear_decay(0, 10)(0) == 1.0


def test_train_step_updates_and_follows_the_schedule(plans):
    trainer = make_trainer(DescriptorTrainer, plans)
    view = torch.rand(1, 1, 8, 16, 16)
    batch = batch_of((view, view.flip(-1)), random_idx(32, (8, 16, 16), 0), random_idx(32, (8, 16, 16), 1))
    before = [p.detach().clone() for p in trainer.trainable_parameters()]
    for _ in range(2):
        out = trainer.train_step(batch)
    assert trainer.iteration == 2 and np.isfinite(out["loss"])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.trainable_parameters()))


def test_nan_guard_stops_before_the_update(plans, monkeypatch):
    trainer = make_trainer(DescriptorTrainer, plans)
    params = trainer.trainable_parameters()
    before = [p.detach().clone() for p in params]
    monkeypatch.setattr(trainer, "compute_loss", lambda batch: (params[0].sum() * float("nan"), {"loss/x": 1.0}))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at iteration 1"):
        trainer.train_step({})
    # a finite loss whose gradient is NaN (sqrt at 0) is caught as well
    monkeypatch.setattr(trainer, "compute_loss",
                        lambda batch: (torch.sqrt((params[0] - params[0].detach()).pow(2).sum()), {}))
    with pytest.raises(NonFiniteLossError, match="gradient norm"):
        trainer.train_step({})
    assert trainer.iteration == 0
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert not list(Path(trainer.output_folder).glob("checkpoint_*.pth"))


def test_checkpoint_round_trip_and_mismatch(plans, tmp_path):
    trainer = make_trainer(ConditionTrainer, plans)
    view = torch.rand(1, 1, 8, 16, 16)
    trainer.train_step(batch_of((view, view), random_idx(8, (8, 16, 16), 0), random_idx(8, (8, 16, 16), 0)))
    path = str(tmp_path / "ckpt.pth")
    trainer.save_checkpoint(path)
    ckpt = load_checkpoint(path)
    assert ckpt["in_channels"] == 2 and ckpt["iteration"] == 1 and ckpt["stage"] == "condition"
    assert "ssl_head_weights" in ckpt and tuple(ckpt["screener_config"]["network"]["patch_size_xyz"]) == (16, 16, 8)

    restored = make_trainer(ConditionTrainer, plans)
    restored.load_checkpoint(path)
    assert restored.iteration == 1 and restored.lr_scheduler.last_epoch == 1
    for a, b in zip(trainer.trainable_parameters(), restored.trainable_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    other = make_trainer(ConditionTrainer, plans, ["network.embedding_dim=8"])
    with pytest.raises(ScreenerError, match="network"):
        other.load_checkpoint(path)
    descriptor = make_trainer(DescriptorTrainer, plans)
    with pytest.raises(ScreenerError, match="stage 'condition'"):
        descriptor.load_checkpoint(path)


def test_ssl_health_signals():
    g = torch.Generator().manual_seed(0)
    e1 = torch.randn(200, 6, generator=g)
    same = ssl_health(e1, e1.clone())
    assert same["health/cos_positive"] == pytest.approx(1.0, abs=1e-6)
    assert same["health/cos_random"] < 0.3
    expected_std = np.concatenate([e1.numpy(), e1.numpy()]).std(axis=0, ddof=1).mean()
    assert same["health/embedding_std"] == pytest.approx(expected_std, rel=1e-5)


def test_bad_schedule_is_a_screener_error(plans):
    with pytest.raises(ScreenerError, match="ssl.log_every"):
        make_trainer(DescriptorTrainer, plans, ["ssl.log_every=0"])

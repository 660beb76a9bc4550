"""The baseline stages on a fake dataset: a few training steps, checkpoints, --c, the loaded scoring models."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from nnscreener import stages
from nnscreener.checkpoints import load_checkpoint
from nnscreener.config import merge, parse_set_overrides
from nnscreener.data.baseline_loaders import make_patch_loader, make_synthetic_anomaly_loader
from nnscreener.errors import ScreenerError
from nnscreener.trainers.baselines import AutoencoderTrainer, DraemTrainer, SyntheticAnomalyTrainer
from nnscreener.trainers.run import resolved_plans_dict
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

DATASET_ID = 993
# patch (x, y, z) 16x16x8; log and checkpoint every 3 of 6 iterations
TINY = ["network.patch_size_xyz=16,16,8"] + [f"{section}.{field}" for section in ("baseline_ae", "baseline_synthetic",
                                                                             "baseline_draem")
                                             for field in ("batch_size=2", "num_iterations=6", "warmup_iterations=1",
                                                           "learning_rate=3e-3", "log_every=3",
                                                           "checkpoint_every=3")]
CASES = ["case_000", "case_001"]


@pytest.fixture
def plans(nnunet_env, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return make_fake_preprocessed_dataset(nnunet_env, dataset_id=DATASET_ID, n_cases=2, shape_zyx=(24, 40, 40))


def make_trainer(cls, plans, extra=()):
    config = merge(plans.config, parse_set_overrides(TINY + list(extra)))
    return cls(plans=resolved_plans_dict(plans, config, False), configuration="3d_fullres", fold="all",
               dataset_json=plans.dataset_json, device=torch.device("cpu"))


def tiny_plans(plans):
    return dataclasses.replace(plans, config=merge(plans.config, parse_set_overrides(TINY)))


@pytest.mark.parametrize("cls, variant, logged, extra", [
    (AutoencoderTrainer, "l1", "recon/mae", ()), (SyntheticAnomalyTrainer, "blend", "blend/mae_anomaly", ()),
    (SyntheticAnomalyTrainer, "visible", "blend/mae_anomaly", ("baseline_synthetic.target=visible",)),
    (DraemTrainer, "draem", "loss/focal", ())])
def test_a_few_steps_train_checkpoint_and_load_as_a_scoring_model(plans, nnunet_env, cls, variant, logged, extra):
    trainer = make_trainer(cls, plans, extra)
    folder = nnunet_env["nnUNet_results"] / f"Dataset{DATASET_ID}_Fake" / f"{cls.stage}__{variant}__{plans.plans_name}"
    assert Path(trainer.output_folder) == folder
    trainer.run_training()
    for name in ("checkpoint_final.pth", "plans.json", "dataset.json", "config.json", "progress.png"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoint_latest.pth").exists()
    assert next(folder.glob("training_log_*.txt")).read_text().count(logged) == 2
    ckpt = load_checkpoint(folder / "checkpoint_final.pth")
    assert ckpt["stage"] == cls.stage and ckpt["variant"] == variant and ckpt["iteration"] == 6
    assert len(ckpt["logging"]["train_losses"]) == 2 and all(map(math.isfinite, ckpt["logging"]["train_losses"]))

    model, config = stages.get_stage(cls.stage).load_model(folder, "cpu")
    assert config.to_dict() == ckpt["screener_config"]
    trained = {k: v for k, v in model.state_dict().items()}
    assert all(torch.equal(trained[k], v) for k, v in ckpt["network_weights"].items())
    score = model.anomaly_map(torch.rand(2, 1, 8, 16, 16), torch.zeros(2, 3, dtype=torch.int64))
    assert score.shape == (2, 1, 8, 16, 16) and torch.isfinite(score).all()
    if cls is SyntheticAnomalyTrainer:  # its output bias started at the anomaly prior, not at sigmoid 0.5
        assert bool(ckpt["network_weights"]["initialized"])


def test_autoencoder_training_lowers_the_held_out_reconstruction_error(plans):
    held_out = next(make_patch_loader(tiny_plans(plans), CASES, batch_size=4, num_workers=0, seed=999))
    x = torch.as_tensor(held_out["image"])
    trainer = make_trainer(AutoencoderTrainer, plans, ["baseline_ae.num_iterations=30", "baseline_ae.log_every=10",
                                                       "baseline_ae.checkpoint_every=30"])
    trainer.initialize()
    trainer.network.eval()
    with torch.no_grad():
        before = float((trainer.network(x) - x).abs().mean())
    trainer.run_training()
    trainer.network.eval()
    with torch.no_grad():
        after = float((trainer.network(x) - x).abs().mean())
    print(f"held-out mean |x - x_hat|: {before:.4f} -> {after:.4f} after 30 steps")
    assert after < 0.7 * before


def test_synthetic_loader_batches_are_seeded_and_targets_match_the_images(plans):
    p = tiny_plans(plans)
    batches = [next(make_synthetic_anomaly_loader(p, CASES, batch_size=3, num_workers=0, seed=s)) for s in (4, 4, 5)]
    for key in ("image", "target"):
        assert batches[0][key].shape == (3, 1, 8, 16, 16) and batches[0][key].dtype == torch.float32
        assert torch.equal(batches[0][key], batches[1][key])
    assert not torch.equal(batches[0]["image"], batches[2]["image"])
    target = torch.cat([b["target"] for b in batches])
    assert float(target.max()) <= 1.0 and (target > 0).any() and (target == 0).any()


def test_cli_trains_a_baseline_and_continues_it(plans, nnunet_env):
    from nnscreener.cli.train import main

    argv = [str(DATASET_ID), "baseline_ae", "-p", plans.plans_name, "-device", "cpu", "--set", "baseline_ae.loss=l2"]
    argv += [a for s in TINY for a in ("--set", s)]
    assert main(argv + ["--num_iterations", "3"]) == 0
    folder = nnunet_env["nnUNet_results"] / f"Dataset{DATASET_ID}_Fake" / f"baseline_ae__l2__{plans.plans_name}"
    assert load_checkpoint(folder / "checkpoint_final.pth")["iteration"] == 3
    assert main(argv + ["--num_iterations", "6", "--c"]) == 0
    final = load_checkpoint(folder / "checkpoint_final.pth")
    assert final["iteration"] == 6 and final["screener_config"]["baseline_ae"]["num_iterations"] == 6
    assert {float(s["step"]) for s in final["optimizer_state"]["state"].values()} == {6.0}


def test_a_checkpoint_of_another_stage_is_refused(plans):
    trainer = make_trainer(AutoencoderTrainer, plans, ["baseline_ae.num_iterations=3"])
    trainer.run_training()
    folder = Path(trainer.output_folder)
    with pytest.raises(ScreenerError, match="is not a baseline_synthetic checkpoint"):
        stages.get_stage("baseline_synthetic").load_model(folder, "cpu")

"""DensityTrainer on a fake dataset with randomly initialised frozen descriptor / condition checkpoints."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from nnscreener import paths
from nnscreener.checkpoints import FINAL_CHECKPOINT, load_checkpoint, save_checkpoint
from nnscreener.trainers.run import resolved_plans_dict
from nnscreener.config import merge, parse_set_overrides
from nnscreener.errors import ScreenerError
from nnscreener.model import ScreenerModel, load_screener_model
from nnscreener.networks.dense_net import build_dense_net
from nnscreener.trainers.base import NonFiniteLossError
from nnscreener.trainers.density import DensityTrainer
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

DATASET_ID = 992
# patch (x, y, z) 16x16x8 -> pooled by (3, 3, 2) to 5x5x4; log and checkpoint every 3 of 6 iterations
TINY = ["network.patch_size_xyz=16,16,8", "density.batch_size=2", "density.num_iterations=6",
        "density.warmup_iterations=1", "density.learning_rate=3e-3", "density.log_every=3",
        "density.checkpoint_every=3", "density.flow_blocks=2", "density.flow_hidden=16",
        "density.gaussian_hidden=8", "density.sincos_dim=12",
        "density.intensity_histogram_bins=0"]  # the preset's 8 histogram channels: in the dimensions test below


@pytest.fixture
def plans(nnunet_env, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # batches in the test process
    return make_fake_preprocessed_dataset(nnunet_env, dataset_id=DATASET_ID, n_cases=2, shape_zyx=(24, 40, 40))


def write_frozen_stage(plans, stage: str, in_channels: int, embedding_dim: int = 32, seed: int = 0) -> Path:
    """A randomly initialised descriptor / condition checkpoint (docs/design.md C6) in its C10 stage folder."""
    torch.manual_seed(seed)
    net = build_dense_net(plans, in_channels, embedding_dim)
    variant = paths.ssl_variant(plans.config.ssl.objective, embedding_dim)
    folder = paths.stage_folder(DATASET_ID, stage, variant, plans.plans_name)
    folder.mkdir(parents=True, exist_ok=True)
    config = merge(plans.config, {"network": {"embedding_dim": embedding_dim}})
    save_checkpoint({"network_weights": net.state_dict(), "screener_config": config.to_dict(),
                     "in_channels": in_channels}, folder / FINAL_CHECKPOINT)
    (folder / "plans.json").write_text(json.dumps(plans.plans))
    return folder


def make_trainer(plans, condition: str, density: str, extra=()) -> DensityTrainer:
    overrides = TINY + [f"density.condition={condition}", f"density.density={density}"] + list(extra)
    config = merge(plans.config, parse_set_overrides(overrides))
    return DensityTrainer(plans=resolved_plans_dict(plans, config, False), configuration="3d_fullres", fold="all",
                          dataset_json=plans.dataset_json, device=torch.device("cpu"))


@pytest.fixture
def frozen_stages(plans):
    write_frozen_stage(plans, "descriptor", 1, seed=0)
    write_frozen_stage(plans, "condition", 2, seed=1)
    return plans


def held_out_batch(plans, seed: int = 999) -> dict:
    """Patches drawn with a seed the training loader never uses."""
    from nnscreener.data.loaders import make_density_loader

    config = merge(plans.config, parse_set_overrides(TINY))
    loader = make_density_loader(dataclasses.replace(plans, config=config), ["case_000", "case_001"], 0, seed=seed)
    return next(loader)


@torch.no_grad()
def mean_nll(model: ScreenerModel, batch: dict) -> float:
    return float(model.anomaly_map(torch.as_tensor(batch["image"]), torch.as_tensor(batch["origin_zyx"])).mean())


@pytest.mark.parametrize("condition", ["masking", "sincos", "none"])
@pytest.mark.parametrize("density", ["gaussian", "flow"])
def test_every_variant_trains_and_its_folder_loads_for_prediction(frozen_stages, nnunet_env, condition, density):
    plans = frozen_stages
    trainer = make_trainer(plans, condition, density)
    folder = nnunet_env["nnUNet_results"] / f"Dataset{DATASET_ID}_Fake" / \
        f"density__{condition}_{density}__{plans.plans_name}"
    assert Path(trainer.output_folder) == folder
    held_out = held_out_batch(plans)
    trainer.initialize()
    trainer.network.train()
    trainer.compute_loss(held_out_batch(plans, seed=998))  # the data-dependent init, as the first step does
    before = mean_nll(trainer.network, held_out)
    trainer.run_training()

    for name in ("checkpoint_final.pth", "plans.json", "dataset.json", "config.json", "progress.png"):
        assert (folder / name).is_file(), name
    assert next(folder.glob("training_log_*.txt")).read_text().count("nll/p99") == 2
    ckpt = load_checkpoint(folder / "checkpoint_final.pth")
    config = json.loads((folder / "config.json").read_text())
    assert ckpt["stage"] == "density" and ckpt["iteration"] == 6 and ckpt["variant"] == f"{condition}_{density}"
    assert config["density"]["condition"] == condition and config == json.loads(json.dumps(ckpt["screener_config"]))
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)

    # only the density was optimised: the frozen networks are bit-identical to their checkpoints
    weights = ckpt["network_weights"]
    descriptor = load_checkpoint(trainer.frozen_stage_folder("descriptor") / FINAL_CHECKPOINT)["network_weights"]
    assert all(torch.equal(weights[f"descriptor.{k}"], v) for k, v in descriptor.items())
    assert any(k.startswith("condition.network.") for k in weights) == (condition == "masking")
    optimised = sum(len(g["params"]) for g in ckpt["optimizer_state"]["param_groups"])
    assert optimised == sum(1 for _ in trainer.network.density.parameters())

    model, loaded_config = load_screener_model(folder, "cpu")
    assert isinstance(model, ScreenerModel) and loaded_config.density.density == density
    after = mean_nll(model, held_out)
    print(f"{condition}_{density}: training NLL per period {[round(v, 3) for v in losses]}, held-out NLL "
          f"{before:.3f} -> {after:.3f} nats/voxel (random frozen networks)")
    assert after < before  # training lowered the NLL of patches it never saw
    score = model.anomaly_map(torch.rand(1, model.image_channels, 8, 16, 16), torch.tensor([[2, -3, 5]]))
    assert score.shape == (1, 1, 4, 5, 5) and torch.isfinite(score).all()


def test_untrained_frozen_stage_is_a_clear_error(plans):
    write_frozen_stage(plans, "descriptor", 1)
    trainer = make_trainer(plans, "masking", "gaussian")
    with pytest.raises(ScreenerError, match="condition__vicreg_d32"):
        trainer.initialize()


def test_wrong_input_channels_are_rejected(plans):
    write_frozen_stage(plans, "descriptor", 2)
    trainer = make_trainer(plans, "none", "gaussian")
    with pytest.raises(ScreenerError, match="2 input channels"):
        trainer.initialize()


def test_chosen_variants_and_their_dimensions_are_used(plans):
    """--descriptor_variant / --condition_variant pick other folders; their d (16 here) reaches the checkpoint."""
    write_frozen_stage(plans, "descriptor", 1, embedding_dim=16)
    write_frozen_stage(plans, "condition", 2, embedding_dim=16)
    trainer = make_trainer(plans, "masking", "flow", ["density.descriptor_variant=vicreg_d16",
                                                      "density.condition_variant=vicreg_d16",
                                                      "density.intensity_histogram_bins=8"])
    trainer.initialize()
    assert trainer.frozen_stage_folder("descriptor").name == f"descriptor__vicreg_d16__{plans.plans_name}"
    # y: d + an 8-bin histogram per stored channel (the cpu preset: the CLAHE image and the kept HU window)
    histograms = 8 * plans.config.preprocessing.channels
    assert trainer.network.density.dim == 16 + histograms and trainer.network.density.cond_dim == 16
    assert trainer.checkpoint_extras() == {"embedding_dims": {"descriptor": 16, "condition": 16},
                                           "masked_input": {"descriptor": False, "condition": False}}


def test_non_finite_loss_stops_training_without_saving(frozen_stages, monkeypatch):
    trainer = make_trainer(frozen_stages, "none", "gaussian")
    trainer.initialize()
    batch = {"image": torch.full((2, trainer.network.image_channels, 8, 16, 16), float("nan")),
             "origin_zyx": torch.zeros(2, 3, dtype=torch.int64)}
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.train_step(batch)
    assert not list(Path(trainer.output_folder).glob("checkpoint_*.pth"))


def test_cli_trains_a_variant_and_continues_it(frozen_stages, nnunet_env):
    """``nnScreener_train DATASET density --condition --density`` and a ``--c`` continuation to more iterations."""
    from nnscreener.cli.train import main

    argv = ["992", "density", "--condition", "sincos", "--density", "flow", "-p", frozen_stages.plans_name,
            "-device", "cpu"] + [a for s in TINY for a in ("--set", s)]
    assert main(argv + ["--num_iterations", "3"]) == 0
    folder = nnunet_env["nnUNet_results"] / f"Dataset{DATASET_ID}_Fake" / \
        f"density__sincos_flow__{frozen_stages.plans_name}"
    first = load_checkpoint(folder / "checkpoint_final.pth")
    assert first["iteration"] == 3 and first["screener_config"]["density"]["condition"] == "sincos"
    assert main(argv + ["--num_iterations", "6", "--c"]) == 0
    final = load_checkpoint(folder / "checkpoint_final.pth")
    assert final["iteration"] == 6 and final["screener_config"]["density"]["num_iterations"] == 6
    adam_steps = {float(s["step"]) for s in final["optimizer_state"]["state"].values()}
    assert adam_steps == {6.0}  # one optimizer state carried across the continuation
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "at iteration 3" in log and "iteration 6/6" in log


def test_a_kept_hu_window_reaches_the_density_and_not_the_frozen_networks(nnunet_env, monkeypatch):
    """preprocessing.keep_window_channel: training reads 2-channel patches; the loaded model's networks see channel
    0 only, its intensity histogram channel 1 (docs/design.md C3, C9)."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=DATASET_ID, n_cases=2, shape_zyx=(24, 40, 40),
                                           window_channel=True)
    write_frozen_stage(plans, "descriptor", 1, seed=0)
    write_frozen_stage(plans, "condition", 2, seed=1)
    trainer = make_trainer(plans, "masking", "gaussian", ["density.intensity_histogram_bins=4"])
    trainer.initialize()
    trainer.run_training()
    model, config = load_screener_model(trainer.output_folder, "cpu")
    assert config.preprocessing.keep_window_channel and model.image_channels == 2
    x = torch.rand(1, 2, 8, 16, 16)
    other_window = torch.cat([x[:, :1], 1.0 - x[:, 1:]], dim=1)
    origin = torch.zeros(1, 3, dtype=torch.int64)
    (y, c), (y_other, c_other) = model.pooled_maps(x, origin), model.pooled_maps(other_window, origin)
    assert torch.equal(y[:, :32], y_other[:, :32]) and torch.equal(c, c_other)  # networks: channel 0 only
    assert not torch.allclose(y[:, 32:], y_other[:, 32:])  # the histogram: the window channel
    assert not torch.allclose(model.anomaly_map(x, origin), model.anomaly_map(other_window, origin))

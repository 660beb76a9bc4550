"""nnScreener_train end to end on a tiny fake dataset: stage folders, resume with --c, overwrite protection."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers.fake_dataset import make_fake_preprocessed_dataset
from nnscreener.checkpoints import load_checkpoint
from nnscreener.cli.train import main
from nnscreener.errors import ScreenerError
from nnscreener.networks.dense_net import load_dense_net
from nnscreener.trainers.base import ScreenerTrainerBase
from nnscreener.trainers.run import prepare_stage_folder

TINY = ["-p", "nnScreenerPlans_cpu", "-device", "cpu"] + [
    a for s in ("network.patch_size_xyz=32,32,16", "ssl.batch_size=1", "ssl.n_pairs_per_image=64",
                "ssl.vicreg_expander_dims=64,64", "ssl.infonce_projector_dims=64,32", "ssl.log_every=2",
                "ssl.checkpoint_every=2", "ssl.warmup_iterations=2")
    for a in ("--set", s)]


@pytest.fixture
def dataset(nnunet_env, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # batches in the test process
    make_fake_preprocessed_dataset(nnunet_env, n_cases=2)
    return nnunet_env["nnUNet_results"] / "Dataset990_Fake"


@pytest.mark.parametrize("stage, flags, folder_name, in_channels", [
    ("descriptor", [], "descriptor__vicreg_d32__nnScreenerPlans_cpu", 1),
    ("condition", ["--objective", "infonce", "--dim", "16"], "condition__infonce_d16__nnScreenerPlans_cpu", 2),
])
def test_stage_run_writes_its_folder(dataset, stage, flags, folder_name, in_channels):
    assert main(["990", stage, "--num_iterations", "3"] + TINY + flags) == 0
    folder = dataset / folder_name
    for name in ("checkpoint_final.pth", "plans.json", "dataset.json", "config.json", "progress.png"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoint_latest.pth").exists()  # removed once final exists
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "iteration 3/3" in log and "health/cos_positive" in log

    ckpt = load_checkpoint(folder / "checkpoint_final.pth")
    assert ckpt["iteration"] == 3 and ckpt["in_channels"] == in_channels and "ssl_head_weights" in ckpt
    config = json.loads((folder / "config.json").read_text())
    assert config["ssl"]["num_iterations"] == 3 and config == json.loads(json.dumps(ckpt["screener_config"]))
    assert json.loads((folder / "plans.json").read_text())["nnscreener"]["ssl"]["num_iterations"] == 3
    losses = ckpt["logging"]["train_losses"]
    assert ckpt["logging"]["iterations"] == [2, 3] and all(math.isfinite(v) for v in losses)

    net, loaded_config = load_dense_net(folder, "cpu")
    assert net.in_channels == in_channels and net.embedding_dim == loaded_config.network.embedding_dim
    assert net(torch.rand(1, in_channels, 16, 32, 32)).shape == (1, net.embedding_dim, 16, 32, 32)


class Interrupted(Exception):
    pass


def test_resume_continues_from_the_latest_checkpoint(dataset, monkeypatch):
    """A run killed after its first checkpoint (iteration 2 of 4) resumes with --c at iteration 2, with optimizer
    and scheduler state, and ends at iteration 4 with the same step count as an uninterrupted run."""
    original = ScreenerTrainerBase.on_epoch_end

    def stop_after_first_checkpoint(self):
        original(self)
        if self.iteration == 2:
            raise Interrupted()

    monkeypatch.setattr(ScreenerTrainerBase, "on_epoch_end", stop_after_first_checkpoint)
    with pytest.raises(Interrupted):
        main(["990", "descriptor", "--num_iterations", "4"] + TINY)
    folder = dataset / "descriptor__vicreg_d32__nnScreenerPlans_cpu"
    latest = load_checkpoint(folder / "checkpoint_latest.pth")
    assert latest["iteration"] == 2 and not (folder / "checkpoint_final.pth").exists()

    monkeypatch.setattr(ScreenerTrainerBase, "on_epoch_end", original)
    assert main(["990", "descriptor", "--num_iterations", "4", "--c"] + TINY) == 0
    final = load_checkpoint(folder / "checkpoint_final.pth")
    assert final["iteration"] == 4 and final["lr_scheduler_state"]["last_epoch"] == 4
    adam_steps = {float(s["step"]) for s in final["optimizer_state"]["state"].values()}
    assert adam_steps == {4.0}
    assert final["logging"]["iterations"] == [2, 4]
    assert all(math.isfinite(v) for v in final["logging"]["train_losses"])
    logs = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "at iteration 2" in logs and "iteration 4/4" in logs


def test_nan_guard_stops_with_one_line_and_keeps_the_last_good_checkpoint(dataset, monkeypatch, capsys):
    from nnscreener.trainers.ssl import DescriptorTrainer

    original = DescriptorTrainer.compute_loss

    def nan_at_iteration_3(self, batch):
        loss, logged = original(self, batch)
        return (loss * float("nan") if self.iteration == 2 else loss), logged

    monkeypatch.setattr(DescriptorTrainer, "compute_loss", nan_at_iteration_3)
    assert main(["990", "descriptor", "--num_iterations", "4"] + TINY) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite loss (nan) at iteration 3" in err
    folder = dataset / "descriptor__vicreg_d32__nnScreenerPlans_cpu"
    assert "checkpoint_latest.pth" in err and not (folder / "checkpoint_final.pth").exists()
    assert load_checkpoint(folder / "checkpoint_latest.pth")["iteration"] == 2


def test_refuses_to_overwrite_an_existing_run(dataset, capsys):
    folder = dataset / "descriptor__vicreg_d32__nnScreenerPlans_cpu"
    folder.mkdir(parents=True)
    (folder / "checkpoint_final.pth").write_bytes(b"old run")
    assert main(["990", "descriptor"] + TINY) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (folder / "checkpoint_final.pth").read_bytes() == b"old run"
    prepare_stage_folder(folder, continue_training=True, overwrite=False)  # --c keeps it
    assert (folder / "checkpoint_final.pth").exists()
    prepare_stage_folder(folder, continue_training=False, overwrite=True)
    assert not (folder / "checkpoint_final.pth").exists()


@pytest.mark.parametrize("argv, message", [
    (["990", "descriptor", "-p", "nnScreenerPlans_missing", "-device", "cpu"], "no plans 'nnScreenerPlans_missing'"),
    (["990", "descriptor", "-device", "cpu", "-num_gpus", "2"] + TINY, "-num_gpus 2"),
    (["990", "descriptor", "--set", "ssl.no_such_field=1"] + TINY, "unknown config key 'no_such_field'"),
    (["990", "descriptor", "--set", "network.base_num_features=32"] + TINY, "network.base_num_features is fixed"),
    (["990", "condition", "--set", "preprocessing.use_clahe=false"] + TINY, "preprocessing.use_clahe is fixed"),
])
def test_user_errors_are_one_line(dataset, capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("nnScreener_train: error:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_gpu_is_a_clear_error(dataset, capsys):
    assert main(["990", "descriptor", "-p", "nnScreenerPlans_cpu", "-device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_device_defaults_to_cuda_only_when_available(monkeypatch):
    from nnscreener.trainers.run import resolve_training_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_training_device(None, 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_training_device(None, 1) == "cuda"
    assert resolve_training_device("cpu", 1) == "cpu"
    with pytest.raises(ScreenerError, match="only 1 GPUs"):
        resolve_training_device(None, 2)


def test_prepare_stage_folder_ignores_fresh_folders(tmp_path):
    prepare_stage_folder(tmp_path / "missing", continue_training=False, overwrite=False)
    with pytest.raises(ScreenerError):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "checkpoint_latest.pth").write_bytes(b"")
        prepare_stage_folder(tmp_path / "run", continue_training=False, overwrite=False)


def test_seed_flag_and_set_override_reach_the_config():
    from nnscreener.cli.train import build_parser, run_overrides
    from nnscreener.config import ScreenerConfig, merge

    assert ScreenerConfig().seed == 0
    assert run_overrides(build_parser().parse_args(["990", "descriptor", "--seed", "7"]))["seed"] == 7
    by_set = run_overrides(build_parser().parse_args(["990", "density", "--set", "seed=3"]))
    assert merge(ScreenerConfig(), by_set).seed == 3


def test_same_seed_gives_identical_weights_and_another_seed_differs(dataset):
    """Three-step condition runs (network init, masking, augmentation and a background loader worker all random):
    the same --seed twice gives bit-identical weights, another seed different ones."""
    folder = dataset / "condition__vicreg_d32__nnScreenerPlans_cpu"

    def weights_after_run(seed: int) -> dict:
        argv = ["990", "condition", "--num_iterations", "3", "--seed", str(seed), "--overwrite"] + TINY
        assert main(argv) == 0
        checkpoint = load_checkpoint(folder / "checkpoint_final.pth")
        assert checkpoint["screener_config"]["seed"] == seed
        return {**checkpoint["network_weights"], **checkpoint["ssl_head_weights"]}

    first, again, other = weights_after_run(1), weights_after_run(1), weights_after_run(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)

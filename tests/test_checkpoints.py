"""The checkpoint contract: weights_only loading only, clear errors for foreign files, round trips per stage."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from torch import nn

from nnscreener import checkpoints
from nnscreener.checkpoints import (FINAL_CHECKPOINT, LATEST_CHECKPOINT, load_checkpoint, load_density_checkpoint,
                                    load_resume_checkpoint, load_ssl_checkpoint, save_checkpoint)
from nnscreener.config import ScreenerConfig
from nnscreener.errors import ScreenerError


class _TouchesAFile:
    """An object whose unpickling would create ``marker``: any code a pickle runs on load could do worse."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _weights(seed: int) -> dict:
    torch.manual_seed(seed)
    return nn.Conv3d(2, 3, 1).state_dict()


def _stage_checkpoint(stage: str) -> dict:
    """What a trainer saves, reduced to the keys of the contract."""
    module = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.rand(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    checkpoint = {"network_weights": _weights(0), "optimizer_state": optimizer.state_dict(),
                  "lr_scheduler_state": scheduler.state_dict(), "grad_scaler_state": None,
                  "logging": {"train_losses": [1.5, 1.25], "iterations": [2, 4]}, "current_epoch": 2,
                  "iteration": 4, "init_args": {"fold": "all", "device": torch.device("cpu")}, "stage": stage,
                  "variant": "v", "screener_config": ScreenerConfig().to_dict()}
    if stage == "density":
        checkpoint["embedding_dims"] = {"descriptor": 32}
    else:
        checkpoint.update(in_channels=1 if stage == "descriptor" else 2, ssl_head_weights=_weights(1))
    return checkpoint


def test_file_names():
    assert (FINAL_CHECKPOINT, LATEST_CHECKPOINT) == ("checkpoint_final.pth", "checkpoint_latest.pth")


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / FINAL_CHECKPOINT
    torch.save({"network_weights": _weights(0), "screener_config": _TouchesAFile(marker), "in_channels": 1}, path)
    for load in (load_checkpoint, load_ssl_checkpoint, load_density_checkpoint, load_resume_checkpoint):
        with pytest.raises(ScreenerError, match=r"checkpoint_final\.pth is refused: it holds non-tensor objects"):
            load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_foreign_files_give_a_clear_error(tmp_path):
    foreign = tmp_path / "model.pth"
    torch.save({"state_dict": _weights(0)}, foreign)
    with pytest.raises(ScreenerError, match=r"model\.pth is not a descriptor/condition checkpoint \(missing keys "
                                            r"\['network_weights', 'screener_config', 'in_channels'\]\)"):
        load_ssl_checkpoint(foreign)
    with pytest.raises(ScreenerError, match=r"model\.pth is not a density checkpoint"):
        load_density_checkpoint(foreign)
    with pytest.raises(ScreenerError, match=r"model\.pth is not an nnScreener checkpoint \(missing keys"):
        load_resume_checkpoint(foreign)
    torch.save(_weights(0), foreign)  # a bare state dict
    with pytest.raises(ScreenerError, match="missing keys"):
        load_ssl_checkpoint(foreign)
    torch.save([1, 2], foreign)
    with pytest.raises(ScreenerError, match="holds a list, not a dict"):
        load_checkpoint(foreign)
    foreign.write_bytes(b"old run")
    with pytest.raises(ScreenerError, match=r"model\.pth"):
        load_checkpoint(foreign)
    with pytest.raises(ScreenerError, match=r"missing checkpoint .*absent\.pth"):
        load_checkpoint(tmp_path / "absent.pth")


def test_wrong_stage_is_named(tmp_path):
    save_checkpoint({**_stage_checkpoint("density"), "in_channels": 1}, tmp_path / "density.pth")
    save_checkpoint(_stage_checkpoint("descriptor"), tmp_path / "descriptor.pth")
    with pytest.raises(ScreenerError, match=r"not a descriptor/condition checkpoint \(stage 'density'\)"):
        load_ssl_checkpoint(tmp_path / "density.pth")
    with pytest.raises(ScreenerError, match=r"not a density checkpoint \(stage 'descriptor'\)"):
        load_density_checkpoint(tmp_path / "descriptor.pth")


@pytest.mark.parametrize("stage, loader", [("descriptor", load_ssl_checkpoint), ("condition", load_ssl_checkpoint),
                                           ("density", load_density_checkpoint)])
def test_round_trip_of_each_stage(tmp_path, stage, loader):
    saved = _stage_checkpoint(stage)
    path = tmp_path / FINAL_CHECKPOINT
    save_checkpoint(saved, path)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    for loaded in (loader(path), load_resume_checkpoint(path)):
        assert loaded.keys() == saved.keys()
        for key, tensor in saved["network_weights"].items():
            assert torch.equal(loaded["network_weights"][key], tensor)
        assert loaded["optimizer_state"]["state"][0]["step"] == saved["optimizer_state"]["state"][0]["step"]
        assert ScreenerConfig.from_dict(loaded["screener_config"]) == ScreenerConfig()
        assert loaded["logging"] == saved["logging"] and loaded["stage"] == stage


def test_plain_makes_numpy_values_loadable(tmp_path):
    value = {"a": np.float32(1.5), "b": [np.arange(3), (np.int64(2), "x")], "t": torch.ones(2)}
    converted = checkpoints.plain(value)
    assert converted["a"] == 1.5 and type(converted["a"]) is float
    assert converted["b"] == [[0, 1, 2], (2, "x")] and torch.equal(converted["t"], torch.ones(2))
    save_checkpoint(converted, tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "c.pth")["b"] == [[0, 1, 2], (2, "x")]

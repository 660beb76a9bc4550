"""Shared pytest fixtures: isolated nnU-Net folders and a small thread budget."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture
def nnunet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Points nnUNet_raw / nnUNet_preprocessed / nnUNet_results at fresh folders under tmp_path."""
    env = {}
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        d = tmp_path / sub
        d.mkdir()
        monkeypatch.setenv(var, str(d))
        env[var] = d
    return env

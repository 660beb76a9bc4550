"""Training that cannot start, or fails early, says why in one line and leaves no stray stage folder; ``--c`` on a
finished run says that there is nothing to continue."""
from __future__ import annotations

import shutil

import pytest

from nnscreener.cli.train import main
from nnscreener.errors import ScreenerError
from nnscreener.trainers.base import ScreenerTrainerBase
from tests.cli.test_train import TINY
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset


@pytest.fixture
def plans(nnunet_env, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # batches in the test process
    return make_fake_preprocessed_dataset(nnunet_env, n_cases=2)


def _folders(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def test_missing_preprocessed_folder_is_one_line_and_leaves_no_folder(plans, nnunet_env, capsys):
    shutil.rmtree(plans.data_dir)
    assert main(["990", "descriptor", "--num_iterations", "2"] + TINY) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnScreener_train: error: the preprocessed cases of plans 'nnScreenerPlans_cpu' are "
                          f"missing: {plans.data_dir} does not exist") and err.count("\n") == 1
    assert _folders(nnunet_env["nnUNet_results"]) == []


def test_an_early_failure_leaves_no_stage_folder(plans, nnunet_env, capsys, monkeypatch):
    def fail(self):
        raise ScreenerError("the loader broke")

    monkeypatch.setattr(ScreenerTrainerBase, "get_dataloaders", fail)
    assert main(["990", "descriptor", "--num_iterations", "2"] + TINY) == 1
    assert "nnScreener_train: error: the loader broke" in capsys.readouterr().err
    assert _folders(nnunet_env["nnUNet_results"]) == []


def test_continue_on_a_finished_run_says_so(plans, nnunet_env, capsys):
    assert main(["990", "descriptor", "--num_iterations", "2"] + TINY) == 0
    capsys.readouterr()
    assert main(["990", "descriptor", "--num_iterations", "2", "--c"] + TINY) == 0
    out = capsys.readouterr().out
    assert "nothing to continue" in out and "already finished its 2 iterations" in out and "--overwrite" in out

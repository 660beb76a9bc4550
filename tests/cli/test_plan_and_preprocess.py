"""nnScreener_plan_and_preprocess: its flags reach nnscreener.planning.pipeline.plan_and_preprocess (tested in
tests/planning/test_pipeline.py) and a ScreenerError becomes one line on stderr with exit code 1."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest

from nnscreener.cli import plan_and_preprocess as cli
from nnscreener.errors import ScreenerError
from tests.planning.test_preprocessor import write_phantom_raw_dataset


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("nnScreener_plan_and_preprocess: error: "), err
    return err[-1]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    """Replaces the library function with a recorder of its arguments."""
    recorded: List[Dict[str, Any]] = []

    def fake(dataset, config=None, num_processes=1, verify_dataset_integrity=False, clean=False, plans_name=None,
             allow_non_ct=False):
        recorded.append(dict(dataset=dataset, config=config, num_processes=num_processes,
                             verify_dataset_integrity=verify_dataset_integrity, clean=clean, plans_name=plans_name,
                             allow_non_ct=allow_non_ct))

    monkeypatch.setattr(cli, "plan_and_preprocess", fake)
    return recorded


def test_flags_reach_the_library_function(calls):
    assert cli.main(["-d", "500", "-np", "3", "--preset", "cpu", "--set", "preprocessing.clahe_clip_limit=0.03",
                     "--verify_dataset_integrity", "--clean", "-p", "MyPlans", "--allow_non_ct"]) == 0
    (call,) = calls
    config = call.pop("config")
    assert call == dict(dataset="500", num_processes=3, verify_dataset_integrity=True, clean=True,
                        plans_name="MyPlans", allow_non_ct=True)
    assert config.preset == "cpu" and config.preprocessing.clahe_clip_limit == 0.03


def test_defaults(calls):
    assert cli.main(["-d", "Dataset500_SyntheticCT"]) == 0
    (call,) = calls
    assert call["config"].preset == "default" and call["num_processes"] >= 1
    assert not call["verify_dataset_integrity"] and not call["clean"] and call["plans_name"] is None
    assert not call["allow_non_ct"]


def test_error_is_one_line_with_exit_code_1(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise ScreenerError("first line\n   second line")

    monkeypatch.setattr(cli, "plan_and_preprocess", fail)
    assert cli.main(["-d", "500"]) == 1
    assert _error_line(capsys) == "nnScreener_plan_and_preprocess: error: first line second line"


def test_unknown_dataset_id(nnunet_env, capsys):
    assert cli.main(["-d", "123"]) == 1
    assert "'123' was not found" in _error_line(capsys)


def test_unset_environment_variable(nnunet_env, monkeypatch, capsys):
    write_phantom_raw_dataset(nnunet_env["nnUNet_raw"])
    monkeypatch.delenv("nnUNet_preprocessed")
    assert cli.main(["-d", "500"]) == 1
    assert "nnUNet_preprocessed is not set" in _error_line(capsys)

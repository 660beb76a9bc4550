"""nnScreener_demo: its flags reach nnscreener.demo.run_demo (the demo itself is tested in tests/test_demo.py) and
a ScreenerError becomes one line on stderr with exit code 1."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from nnscreener.cli import demo as cli
from nnscreener.demo import BASE_ITERATIONS, DemoSettings
from nnscreener.errors import ScreenerError


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> List[DemoSettings]:
    """Replaces run_demo with a recorder of its settings."""
    recorded: List[DemoSettings] = []
    monkeypatch.setattr(cli, "run_demo", recorded.append)
    return recorded


def test_flags_reach_the_demo(calls, tmp_path: Path):
    assert cli.main(["--work_dir", str(tmp_path), "--minutes", "30", "--iterations", "2", "-d", "501",
                     "--n_train", "4", "--n_test", "2", "--seed", "3", "-device", "cuda", "-np", "1"]) == 0
    assert calls == [DemoSettings(work_dir=tmp_path, minutes=30.0, iterations=2, dataset_id=501, n_train=4,
                                  n_test=2, seed=3, device="cuda", num_processes=1)]


def test_defaults(calls):
    assert cli.main([]) == 0
    assert calls == [DemoSettings(work_dir=Path("nnscreener_demo"))]


def test_error_is_one_stderr_line_with_exit_code_1(monkeypatch, capsys):
    def fail(settings: DemoSettings) -> None:
        raise ScreenerError("--iterations must be >= 1, got 0")

    monkeypatch.setattr(cli, "run_demo", fail)
    assert cli.main(["--iterations", "0"]) == 1
    assert capsys.readouterr().err == "nnScreener_demo: error: --iterations must be >= 1, got 0\n"


def test_too_small_budget_is_reported(nnunet_env, capsys, tmp_path: Path):
    assert cli.main(["--work_dir", str(tmp_path / "work"), "--minutes", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnScreener_demo: error: --minutes must exceed") and "Traceback" not in err


def test_budget_constants_stay_importable_from_the_cli():
    assert cli.BASE_ITERATIONS is BASE_ITERATIONS

"""The shared ScreenerError handling of the console commands."""
from __future__ import annotations

import pytest

from nnscreener.cli.common import EXIT_ERROR, report_error, run_cli
from nnscreener.errors import ScreenerError


def _raise(message: str) -> None:
    raise ScreenerError(message)


def test_success_is_exit_code_0_and_the_body_result_is_ignored(capsys):
    assert run_cli("prog", lambda: "a path") == 0
    assert capsys.readouterr().err == ""


def test_screener_error_is_one_stderr_line_and_exit_code_1(capsys):
    assert EXIT_ERROR == 1
    assert run_cli("prog", lambda: _raise("bad input")) == 1
    assert capsys.readouterr().err == "prog: error: bad input\n"


def test_message_kept_as_is_unless_one_line_is_asked(capsys):
    assert report_error("prog", ScreenerError("a\n  b")) == 1
    assert capsys.readouterr().err == "prog: error: a\n  b\n"
    assert run_cli("prog", lambda: _raise("a\n  b"), one_line=True) == 1
    assert capsys.readouterr().err == "prog: error: a b\n"


def test_other_exceptions_propagate():
    with pytest.raises(ValueError):
        run_cli("prog", lambda: int("x"))

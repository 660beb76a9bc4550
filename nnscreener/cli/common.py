"""Error handling shared by the nnScreener console commands.

Every command turns a :class:`~nnscreener.errors.ScreenerError` into one ``PROG: error: MESSAGE`` line on stderr
(no traceback) and exit code :data:`EXIT_ERROR`; other exceptions propagate unchanged.
"""
from __future__ import annotations

import sys
from typing import Callable

from nnscreener.errors import ScreenerError

EXIT_ERROR = 1  # the exit code of a command that stopped on a ScreenerError


def report_error(prog: str, error: ScreenerError, one_line: bool = False) -> int:
    """Prints ``PROG: error: MESSAGE`` to stderr and returns :data:`EXIT_ERROR`.

    Args:
        prog: the command's name, e.g. ``nnScreener_evaluate``.
        error: the error to report; its message is printed as is.
        one_line: collapse every run of whitespace (newlines included) in the message into one space.
    """
    message = " ".join(str(error).split()) if one_line else str(error)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def run_cli(prog: str, body: Callable[[], object], one_line: bool = False) -> int:
    """Runs a command's body and returns the command's exit code.

    Args:
        prog: the command's name, used in the error line.
        body: the command's work; what it returns is ignored.
        one_line: as in :func:`report_error`.

    Returns:
        0 when the body returned, :data:`EXIT_ERROR` after reporting a ScreenerError it raised.
    """
    try:
        body()
    except ScreenerError as e:
        return report_error(prog, e, one_line)
    return 0

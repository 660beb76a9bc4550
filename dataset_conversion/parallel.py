"""Running the per-case conversion in a process pool: one broken case is reported, not fatal."""
from __future__ import annotations

import multiprocessing
import os
import sys
from functools import partial
from typing import Any, Callable, Sequence, TypeVar

from tqdm import tqdm

from dataset_conversion.report import CaseResult
from nnscreener.errors import ScreenerError
from nnscreener.io.images import short_message

Task = TypeVar("Task")


def default_num_processes() -> int:
    """The default worker count of ``-np``: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _convert_guarded(convert_one: Callable[[Any], dict], task: Any) -> CaseResult:
    try:
        return CaseResult(task.case_id, info=convert_one(task))
    except ScreenerError as e:
        return CaseResult(task.case_id, error=str(e))
    except Exception as e:  # one broken scan among thousands must not stop the run; the message says it is a bug
        return CaseResult(task.case_id, error=f"unexpected {type(e).__name__}: {short_message(e)} (please report)")


def convert_cases(tasks: Sequence[Task], convert_one: Callable[[Task], dict], num_processes: int,
                  desc: str) -> list[CaseResult]:
    """Runs ``convert_one`` on every task (in ``num_processes`` worker processes when > 1) with a progress bar.

    ``convert_one`` must be picklable (a module-level function or a ``functools.partial`` of one) and raise
    ScreenerError for a case that cannot be converted; the result lists such cases with their message.
    """
    guarded = partial(_convert_guarded, convert_one)
    bar = tqdm(total=len(tasks), desc=desc, unit="case", file=sys.stderr)
    results = []
    try:
        if num_processes <= 1 or len(tasks) <= 1:
            for task in tasks:
                results.append(guarded(task))
                bar.update()
        else:
            with multiprocessing.get_context().Pool(min(num_processes, len(tasks))) as pool:
                for result in pool.imap_unordered(guarded, tasks):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results

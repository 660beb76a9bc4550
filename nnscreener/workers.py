"""Worker processes that end with their parent.

A SIGKILLed (or out-of-memory-killed) main process cannot tell its workers to stop, and pool workers blocked on
their task queue would live on (about 0.5 GB each). :func:`exit_with_parent` starts a watchdog thread in a worker
that ends the worker once its parent is gone (it is re-parented, so ``os.getppid()`` changes). It serves as a pool
``initializer`` (prediction and planning pools) and is started by the training loader's background processes.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

PARENT_POLL_S = 0.5  # how often a worker checks that its parent is alive


def _watch(parent_pid: int, interval_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)  # no cleanup: the run this worker served is gone


def exit_with_parent(parent_pid: Optional[int] = None, interval_s: float = PARENT_POLL_S) -> None:
    """Ends this process within ``interval_s`` seconds after process ``parent_pid`` (default: the current parent)
    is gone; a daemon thread watches, so the call returns at once. Call it in the worker."""
    parent_pid = os.getppid() if parent_pid is None else int(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the worker started
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, interval_s), daemon=True,
                     name="nnscreener-parent-watch").start()

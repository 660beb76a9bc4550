"""Worker processes end with their parent: a small main process starts prediction pool workers or the training
loader's background workers, reports their pids, and is SIGKILLed; the workers must be gone within seconds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nnscreener.workers import PARENT_POLL_S

REPO = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 10 * PARENT_POLL_S

PREDICTION_POOL = """
    import os
    from nnscreener.inference.predictor import _executor
    pool = _executor(2)
    pids = {pool.submit(os.getpid).result() for _ in range(8)}
"""
TRAINING_LOADER = """
    import multiprocessing, sys
    from pathlib import Path
    from nnscreener.data.loaders import make_density_loader
    from tests.helpers.fake_dataset import make_fake_preprocessed_dataset
    root = Path(sys.argv[1])
    env = {}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / var).mkdir()
        os.environ[var] = env[var] = str(root / var)
    plans = make_fake_preprocessed_dataset(env, n_cases=2, shape_zyx=(8, 16, 16))
    loader = make_density_loader(plans, ["case_000", "case_001"], num_workers=2, seed=0)
    next(loader)
    pids = {p.pid for p in multiprocessing.active_children()}
"""
REPORT_AND_WAIT = """
    import json, time
    print(json.dumps(sorted(pids)), flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper that is not ours counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("body", [PREDICTION_POOL, TRAINING_LOADER], ids=["prediction_pool", "training_loader"])
def test_workers_end_when_the_main_process_is_killed(body, tmp_path):
    code = "import os\n" + textwrap.dedent(body) + textwrap.dedent(REPORT_AND_WAIT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    main = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(main.stdout.readline())
        assert pids and all(_alive(p) for p in pids)
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait()
    deadline = time.monotonic() + GONE_WITHIN_S
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in pids if _alive(p)]
    for pid in survivors:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert survivors == []

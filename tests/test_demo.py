"""The demo end to end on a tiny synthetic dataset with 2 iterations per stage: every step runs and a re-run
reuses what exists; and the budget arithmetic."""
import contextlib
import io
import os
from pathlib import Path

import pytest

from nnscreener import demo
from nnscreener.errors import ScreenerError

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory):
    """One tiny demo run shared by the tests of this module (the nnUNet_* variables unset, as on a fresh
    machine; restored afterwards)."""
    saved = {var: os.environ.pop(var, None) for var in NNUNET_VARS}
    work = tmp_path_factory.mktemp("demo") / "work"
    settings = demo.DemoSettings(work_dir=work, n_train=4, n_test=2, iterations=2, num_processes=1)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            table_path = demo.run_demo(settings)
        yield work, settings, table_path, out.getvalue()
    finally:
        for var, value in saved.items():
            os.environ.pop(var, None)
            if value is not None:
                os.environ[var] = value


def test_demo_runs_every_step_and_writes_the_table(tiny_demo):
    work, _, table_path, out = tiny_demo
    assert table_path == work.resolve() / "results.md"
    table = table_path.read_text()
    for method in ("Screener (masking + flow)", "intensity floor", "random floor"):
        assert f"| {method} |" in table
    maps = sorted((work / "predictions" / "screener_masking_flow").glob("*.nii.gz"))
    assert [m.name for m in maps] == ["test_0000.nii.gz", "test_0001.nii.gz"]
    assert list((work / "predictions" / "screener_masking_flow" / "previews").glob("*.png"))
    results = work / "nnUNet_results" / "Dataset500_SyntheticCT"
    for stage in ("descriptor__vicreg_d32", "condition__vicreg_d32", "density__masking_flow"):
        assert (results / f"{stage}__nnScreenerPlans_cpu" / "checkpoint_final.pth").is_file()
    assert "results table:" in out


def test_rerun_reuses_every_finished_step(tiny_demo, capsys):
    work, settings, _, _ = tiny_demo
    for var in NNUNET_VARS:  # the demo set them for its run; a fresh process would not have them
        os.environ.pop(var, None)
    checkpoint = (work / "nnUNet_results" / "Dataset500_SyntheticCT" / "descriptor__vicreg_d32__nnScreenerPlans_cpu"
                  / "checkpoint_final.pth")
    before = checkpoint.stat().st_mtime_ns
    demo.run_demo(settings)
    out = capsys.readouterr().out
    assert "reusing the raw dataset" in out and "reusing the finished descriptor model" in out
    assert checkpoint.stat().st_mtime_ns == before


def test_budget_must_leave_time_for_training():
    with pytest.raises(ScreenerError, match="--minutes"):
        demo.iterations_for_budget(demo.FIXED_MINUTES)
    assert demo.iterations_for_budget(demo.DEFAULT_MINUTES) == demo.BASE_ITERATIONS
    assert demo.iterations_for_budget(2 * demo.DEFAULT_MINUTES)["descriptor"] > demo.BASE_ITERATIONS["descriptor"]


def test_stage_iterations(tmp_path: Path):
    assert demo.stage_iterations(demo.DemoSettings(tmp_path)) == demo.BASE_ITERATIONS
    assert demo.stage_iterations(demo.DemoSettings(tmp_path, iterations=3)) == dict.fromkeys(demo.BASE_ITERATIONS, 3)
    with pytest.raises(ScreenerError, match="--iterations must be >= 1, got 0"):
        demo.stage_iterations(demo.DemoSettings(tmp_path, iterations=0))

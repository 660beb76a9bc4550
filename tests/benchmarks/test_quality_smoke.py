"""The quality benchmark's own machinery (benchmarks/quality.py): the untrained control's checkpoints, the task
graph, the CPU-time measurement of child processes and the RESULTS.md update. The pipeline it drives is tested
with the package; a full benchmark run is far too long for a unit test."""
from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _load_quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


quality = _load_quality()


def test_untrained_models_load_as_trained_stages_with_the_trainers_initialisation(nnunet_env):
    from nnscreener.networks.dense_net import build_dense_net, load_dense_net
    from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=993, n_cases=1, shape_zyx=(16, 24, 24))
    folders = quality.write_untrained_models("993", plans.plans_name, seed=7)

    assert [f.name for f in folders] == [f"{stage}__vicreg_d32__{plans.plans_name}"
                                         for stage in ("descriptor", "condition")]
    torch.manual_seed(7)
    expected = {"descriptor": build_dense_net(plans, 1), "condition": build_dense_net(plans, 2)}
    for folder in folders:
        stage = folder.name.split("__")[0]
        network, config = load_dense_net(folder)
        assert network.in_channels == {"descriptor": 1, "condition": 2}[stage]
        assert config == plans.config
        reference = expected[stage].state_dict()
        loaded = network.state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_run_graph_blocks_what_depends_on_a_failure_and_respects_jobs():
    running, peak, lock = [0], [0], threading.Lock()
    ran = []

    def work(name, fail=False):
        def action():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
                ran.append(name)
            if fail:
                raise quality.ChildFailed(f"{name} failed")
        return action

    tasks = {t.id: t for t in [
        quality.Task("a", work("a")), quality.Task("b", work("b", fail=True)), quality.Task("c", work("c")),
        quality.Task("d", work("d"), ("b",)), quality.Task("e", work("e"), ("d",)),
        quality.Task("f", work("f"), ("a", "c")),
    ]}
    status = quality.run_graph(tasks, jobs=2)

    assert status == {"a": "done", "b": "failed", "c": "done", "d": "blocked", "e": "blocked", "f": "done"}
    assert sorted(ran) == ["a", "b", "c", "f"]
    assert ran.index("f") > max(ran.index("a"), ran.index("c"))
    assert peak[0] == 2


def test_run_child_counts_the_cpu_time_of_waited_for_grandchildren(tmp_path):
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}], check=True)"
    timing = quality.run_child([sys.executable, "-c", parent], {"PATH": "/usr/bin:/bin"}, tmp_path / "log.txt")

    assert timing["cpu_s"] >= 0.6
    assert timing["wall_s"] >= 0.6
    with pytest.raises(quality.ChildFailed, match="exit code 3.*log.txt"):
        quality.run_child([sys.executable, "-c", "import sys; sys.exit(3)"], {}, tmp_path / "log.txt")
    assert "sys.exit(3)" in (tmp_path / "log.txt").read_text()


def test_write_results_replaces_its_block_and_keeps_what_was_written_by_hand(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Speed benchmark\n\nratio 2.1\n")
    block = lambda n: f"{quality.RESULTS_BEGIN}\nquality table {n}\n{quality.RESULTS_END}\n"  # noqa: E731

    quality.write_results(path, block(1))
    first = path.read_text()
    assert first.startswith("# Results\n\n## Speed benchmark\n\nratio 2.1\n")
    assert "quality table 1" in first and "<!-- interpretation: written by hand after the run -->" in first

    path.write_text(first.replace("<!-- interpretation: written by hand after the run -->", "Nodules win."))
    quality.write_results(path, block(2))
    second = path.read_text()
    assert "quality table 2" in second and "quality table 1" not in second
    assert "ratio 2.1" in second and "Nodules win." in second
    assert second.count(quality.RESULTS_BEGIN) == 1 and second.count(quality.INTERPRETATION_TITLE) == 1

"""Every docstring example (``>>>``) in the ``nnscreener`` package runs and gives the output it shows.

Modules are found by walking the package with ``pkgutil``; only those whose source holds ``>>>`` are imported, so
the test stays cheap and a module gains coverage as soon as it gains an example.
"""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import pkgutil
import types
from pathlib import Path
from typing import List, Tuple

import pytest

import nnscreener


def modules_with_examples() -> List[str]:
    """Dotted names of the package's modules whose source contains a ``>>>`` prompt."""
    names = []
    for info in pkgutil.walk_packages(nnscreener.__path__, prefix="nnscreener."):
        spec = importlib.util.find_spec(info.name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py") and ">>>" in Path(origin).read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


def run_doctests(module: types.ModuleType) -> Tuple[doctest.TestResults, str]:
    """Runs the module's examples; returns (failed, attempted) and the failure report."""
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module, module.__name__):
        runner.run(test, out=out.write)
    return runner.summarize(verbose=False), out.getvalue()


MODULES = modules_with_examples()


def test_examples_are_found():
    # the walk reaches subpackages (inference/ and evaluation/ hold examples today)
    assert "nnscreener.evaluation.metrics" in MODULES
    assert "nnscreener.inference.sliding_window" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    results, report = run_doctests(importlib.import_module(name))
    assert results.attempted > 0, f"{name} has '>>>' in its source but no example doctest could find"
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name}:\n{report}"


def test_a_broken_example_is_reported():
    """The runner above really fails on a wrong output (guards against a check that always passes)."""
    module = types.ModuleType("broken_example")
    module.__doc__ = ">>> 1 + 1\n3\n"
    results, report = run_doctests(module)
    assert (results.failed, results.attempted) == (1, 1)
    assert "Expected:" in report

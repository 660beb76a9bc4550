"""Layering: the installable package ``nnscreener`` never imports the checkout-only top-level folders.

``dataset_conversion`` (the converters), ``benchmarks`` and ``tests`` may import ``nnscreener``, never the other way
round: the converters are not importable from an installed wheel, and prediction must not depend on them. Checked
twice: statically over every ``import`` statement of every nnscreener source file (including imports inside
functions, and ``importlib.import_module("...")`` calls with a literal name), and dynamically through
``sys.modules`` after importing every nnscreener module in a fresh interpreter.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List

import dataset_conversion
import nnscreener

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("dataset_conversion", "benchmarks", "tests")


def module_names(package) -> List[str]:
    """The package and every module below it, by walking its folder (``pkgutil``)."""
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        names.append(info.name)
    return sorted(names)


def is_forbidden(module: str) -> bool:
    """Whether an absolute module name lies in one of the FORBIDDEN top-level packages."""
    return module.split(".")[0] in FORBIDDEN


def _literal_import_target(call: ast.Call) -> str:
    """The literal module name of ``importlib.import_module("x")`` / ``__import__("x")``, or ''."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not call.args:
        return ""
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""


def forbidden_imports(source: str, filename: str = "<source>") -> List[str]:
    """``"line: module"`` for every import of a FORBIDDEN package anywhere in ``source`` (module level, inside
    functions and classes, or through a literal ``importlib.import_module`` call). Relative imports stay inside
    their own package and are never forbidden."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module]
        elif isinstance(node, ast.Call):
            targets = [_literal_import_target(node)]
        else:
            continue
        found += [(node.lineno, t) for t in targets if t and is_forbidden(t)]
    return [f"{line}: {module}" for line, module in sorted(found)]


def forbidden_modules_after_import(modules: Iterable[str]) -> List[str]:
    """Imports ``modules`` in a fresh interpreter started in the repository root (so the forbidden folders are
    importable there) and returns the FORBIDDEN modules that ended up in its ``sys.modules``."""
    script = ("import importlib, json, sys\n"
              f"for name in {sorted(modules)!r}:\n"
              "    importlib.import_module(name)\n"
              f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_of_both_packages_imports():
    names = module_names(nnscreener) + module_names(dataset_conversion)
    assert "nnscreener.io.dicom" in names and "dataset_conversion.raw_dataset" in names
    for name in names:
        importlib.import_module(name)


def test_no_nnscreener_source_file_imports_a_checkout_only_package():
    root = Path(nnscreener.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 20
    offenders = {str(p.relative_to(REPO)): found for p in sources
                 if (found := forbidden_imports(p.read_text(), str(p)))}
    assert offenders == {}, f"nnscreener must not import {FORBIDDEN}: {offenders}"


def test_importing_all_of_nnscreener_loads_no_checkout_only_package():
    assert forbidden_modules_after_import(module_names(nnscreener)) == []


def test_the_checks_flag_a_forbidden_import():
    source = ("import os\n"
              "from nnscreener.io import dicom\n"
              "from . import tests\n"
              "import testsuite\n"
              "def convert():\n"
              "    from dataset_conversion.raw_dataset import OutputDataset\n"
              "    import benchmarks.quality as quality\n"
              "class Case:\n"
              "    def helper(self):\n"
              "        from tests.helpers import fake_dataset\n"
              "        return importlib.import_module('dataset_conversion.convert_nlst')\n")
    assert forbidden_imports(source) == ["6: dataset_conversion.raw_dataset", "7: benchmarks.quality",
                                         "10: tests.helpers", "11: dataset_conversion.convert_nlst"]
    loaded = forbidden_modules_after_import(["nnscreener.errors", "dataset_conversion.case_ids"])
    assert "dataset_conversion.case_ids" in loaded

"""The layout rule of the package: no function over 60 lines and no class over 300 lines in nnscreener/ and
dataset_conversion/ (small functions that read like a method section; split a concept before it grows)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300


def oversized(source: str, name: str) -> List[str]:
    """``name:symbol (lines)`` for every function over MAX_FUNCTION_LINES and class over MAX_CLASS_LINES."""
    found = []
    for node in ast.walk(ast.parse(source)):
        length = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and length > MAX_FUNCTION_LINES:
            found.append(f"{name}:{node.name} ({length} lines)")
        if isinstance(node, ast.ClassDef) and length > MAX_CLASS_LINES:
            found.append(f"{name}:class {node.name} ({length} lines)")
    return found


def test_no_function_or_class_over_the_limits():
    files = sorted(p for root in ("nnscreener", "dataset_conversion") for p in (REPO / root).rglob("*.py"))
    assert len(files) > 50
    found = [item for path in files for item in oversized(path.read_text(), str(path.relative_to(REPO)))]
    assert not found, "split these: " + ", ".join(found)


def test_the_check_flags_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert oversized(f"def f():\n{body}\n", "m.py") == [f"m.py:f ({MAX_FUNCTION_LINES + 1} lines)"]

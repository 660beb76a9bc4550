"""Case ids: file-name-safe ids, numbered ids for groups with several members, and the uniqueness check."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from nnscreener.errors import ScreenerError


def sanitize_case_id(text: str) -> str:
    """A file-name-safe case id: runs of characters other than letters, digits, '.', '_' and '-' become '-'."""
    case_id = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    if not case_id:
        raise ScreenerError(f"cannot make a case id from {text!r}")
    return case_id


def numbered_case_ids(groups: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], str]:
    """Case ids for members of groups (e.g. series of a patient): the group's id when it has one member, else
    ``{group}_{k}`` with k = 1, 2, ... in sorted member order."""
    ids = {}
    for group, members in groups.items():
        members = sorted(set(members))
        for k, member in enumerate(members, start=1):
            ids[(group, member)] = sanitize_case_id(group if len(members) == 1 else f"{group}_{k}")
    return ids


def require_unique_case_ids(tasks: Sequence[Any]) -> None:
    """Raises ScreenerError when two tasks share a ``case_id`` (e.g. -i points at two copies of a dataset)."""
    seen: dict[str, Any] = {}
    for task in tasks:
        if task.case_id in seen:
            raise ScreenerError(f"case id {task.case_id!r} occurs twice ({seen[task.case_id]} and {task}); "
                                f"point -i at a single copy of the dataset")
        seen[task.case_id] = task

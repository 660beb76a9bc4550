"""The outcome of a conversion: which cases were converted (with per-case info) and which were skipped (and why)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case: ``info`` (what was converted) on success, else ``error`` (why it was skipped)."""

    case_id: str
    info: Optional[dict] = None
    error: Optional[str] = None


@dataclass
class ConversionReport:
    """Collects converted cases (with per-case info) and skipped cases (with reasons) and prints them at the end."""

    converted: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, result: CaseResult) -> None:
        if result.error is None:
            self.converted[result.case_id] = result.info or {}
        else:
            self.skipped[result.case_id] = result.error

    def skip(self, case_id: str, reason: str) -> None:
        self.skipped[case_id] = reason

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} case(s), skipped {len(self.skipped)}"]
        lines += [f"  skipped {case}: {reason}" for case, reason in sorted(self.skipped.items())]
        return "\n".join(lines)

    def exit_code(self) -> int:
        """0 when at least one case was converted, 1 when none was."""
        return 0 if self.converted else 1

"""Citations in the code resolve inside the repository: ``docs/design.md Cn`` names a contract heading of
docs/design.md, ``docs/method-notes.md X`` a numbered section of docs/method-notes.md, and nothing points at
documents outside the repository."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("nnscreener", "dataset_conversion", "benchmarks", "tests")
           for p in (ROOT / folder).rglob("*.py") if p != Path(__file__).resolve()]


def _headings(doc: str, pattern: str) -> set:
    return set(re.findall(pattern, (ROOT / "docs" / doc).read_text(), flags=re.MULTILINE))


def test_contract_citations_resolve():
    contracts = _headings("design.md", r"^### (C\d+):")
    cited = set()
    for path in SOURCES:
        for refs in re.findall(r"docs/design\.md ((?:C\d+)(?:(?:/|, )C\d+)*)", path.read_text()):
            cited.update(re.findall(r"C\d+", refs))
    assert cited, "no contract citations found"
    assert cited <= contracts, f"cited contracts missing from docs/design.md: {sorted(cited - contracts)}"


def test_method_note_citations_resolve():
    sections = _headings("method-notes.md", r"^#+ (\d+(?:\.\d+)?)\.? ")
    cited = set()
    for path in SOURCES:
        for ref in re.findall(r"docs/method-notes\.md,? (?:section )?(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?",
                              path.read_text()):
            cited.update(r for r in ref if r)
    assert cited, "no method-note citations found"
    assert cited <= sections, f"cited sections missing from docs/method-notes.md: {sorted(cited - sections)}"


def test_no_citation_leaves_the_repository():
    stale = re.compile(r"implementation notes|shared/(?:design|reference)|architecture\.md")
    bare_contract = re.compile(r"\bcontracts? C\d")  # a contract named without saying where it is defined
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES + [ROOT / "README.md"]
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if stale.search(line) or (bare_contract.search(line) and "docs/design.md" not in line)]
    assert not offenders, f"citations of documents outside the repository: {offenders}"

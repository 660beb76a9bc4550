"""The quality campaign's figures without its models: a folder that outlives the machine.

A campaign's work dir (``quality.py --work_dir W``) holds gigabytes of datasets, checkpoints and maps, and a new
machine starts without it; the tables need only ``campaign.json`` (rows, commands), ``ledger.json`` (CPU and wall
time of every step) and the evaluation summaries (``summaries/<protocol>/*.json``, a few kB each). This module
copies those between ``W`` and an archive folder kept in the repository (:data:`ARCHIVE`), so a later session on a
fresh machine imports them before it runs (its tables keep every earlier row) and exports the union after.

The archive is itself a work dir without models: ``quality_report.py --work_dir benchmarks/figures/quality``
rebuilds the tables from it. Summary paths in ``campaign.json`` are relative to the work dir that holds them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence

import common

ARCHIVE = common.REPO / "benchmarks" / "figures" / "quality"
FILES = ("campaign.json", "ledger.json", "tables.json")
#: The generated dataset's settings an archive's figures belong to (a campaign on other data is refused).
DATASET_KEYS = ("dataset_id", "n_train", "n_test", "data_seed", "size", "base_iterations")


class ArchiveMismatch(SystemExit):
    """The archive's figures were measured on another dataset or budget than this invocation's."""


def relative_summaries(campaign: Mapping[str, Any], work_dir: Path) -> Dict[str, Any]:
    """``campaign`` with every summary path under ``work_dir`` written relative to it (older campaigns wrote
    absolute paths); paths elsewhere are kept as they are."""
    def relative(path: str) -> str:
        p = Path(path)
        return str(p.relative_to(work_dir)) if p.is_absolute() and p.is_relative_to(work_dir) else path

    rows = []
    for row in campaign.get("rows", []):
        seeds = {seed: None if entry is None else
                 {**entry, "summaries": {k: relative(v) for k, v in entry.get("summaries", {}).items()}}
                 for seed, entry in row.get("seeds", {}).items()}
        rows.append({**row, "seeds": seeds})
    return {**campaign, "rows": rows}


def summary_files(campaign: Mapping[str, Any]) -> List[str]:
    """The relative summary paths the campaign's rows name."""
    return sorted({path for row in campaign.get("rows", []) for entry in row.get("seeds", {}).values()
                   for path in (entry or {}).get("summaries", {}).values() if not Path(path).is_absolute()})


def check_dataset(archived: Mapping[str, Any], settings: Mapping[str, Any], archive: Path,
                  keys: Sequence[str] = DATASET_KEYS, file: str = "campaign.json") -> None:
    """Refuses an archive (its ``file``) whose figures belong to another dataset or budget than ``settings``: a
    differing value of one of ``keys`` (a key missing on either side is not compared)."""
    differing = [f"{key}: {archived[key]!r} there, {settings[key]!r} here" for key in keys
                 if key in archived and key in settings and _same(archived[key]) != _same(settings[key])]
    if differing:
        raise ArchiveMismatch(f"{archive / file} holds figures of another dataset or budget "
                              f"({'; '.join(differing)}): use another --figures folder, or --figures none")


def display_name(archive: Path) -> str:
    """The archive as the repository names it (``benchmarks/figures/quality``), else its absolute path."""
    return str(archive.relative_to(common.REPO)) if archive.is_relative_to(common.REPO) else str(archive)


def _same(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def merged_commands(archived: Sequence[Sequence[str]], own: Sequence[Sequence[str]]) -> List[List[str]]:
    """The invocations of the archive and of the work dir, oldest first: one history when one list continues the
    other (the work dir exported into the archive before, or the archive was exported from it), else the archive's
    then the work dir's (a campaign continued on another machine). Repeated invocations stay repeated."""
    archived, own = [list(c) for c in archived], [list(c) for c in own]
    if own[:len(archived)] == archived:
        return own
    if archived[:len(own)] == own:
        return archived
    return archived + own


def commands_of(campaign: Mapping[str, Any]) -> List[List[str]]:
    return list(campaign.get("commands") or ([campaign["command"]] if "command" in campaign else []))


def import_figures(archive: Path, work_dir: Path, settings: Mapping[str, Any],
                   merge_rows: Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], List]) -> bool:
    """Adds the archive's rows, ledger records and summaries to ``work_dir`` (what ``work_dir`` measured itself
    wins: its rows and records are newer). ``merge_rows(earlier, later)`` is quality.py's row merge. Returns
    whether there was an archive."""
    source = archive / "campaign.json"
    if not source.is_file():
        return False
    archived = json.loads(source.read_text())
    check_dataset(archived, settings, archive)
    target = work_dir / "campaign.json"
    own = relative_summaries(json.loads(target.read_text()), work_dir) if target.is_file() else {}
    for path in summary_files(archived):
        if not (work_dir / path).is_file() and (archive / path).is_file():
            (work_dir / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(archive / path, work_dir / path)
    merged = {**archived, **own, "rows": merge_rows(archived.get("rows", []), own.get("rows", [])),
              "commands": merged_commands(commands_of(archived), commands_of(own))}
    common.write_json(target, merged)
    import_ledger(archive, work_dir)
    return True


def merged_ledger(archive: Path, work_dir: Path) -> Dict[str, Any]:
    """The archive's ledger records with ``work_dir``'s over them (the work dir's own records win)."""
    return {**common.Ledger(archive / "ledger.json").records, **common.Ledger(work_dir / "ledger.json").records}


def import_ledger(archive: Path, work_dir: Path) -> None:
    """Adds the archive's ledger records to ``work_dir``'s ledger.json; the work dir's own records win."""
    if (archive / "ledger.json").is_file():
        common.write_json(work_dir / "ledger.json", merged_ledger(archive, work_dir))


def export_figures(work_dir: Path, archive: Path) -> List[Path]:
    """Copies ``work_dir``'s campaign.json (summary paths relative), ledger.json, tables.json and the summaries its
    rows name into ``archive`` (replacing the archive's versions: ``work_dir`` holds the union after
    :func:`import_figures`). Returns the files written."""
    campaign = relative_summaries(json.loads((work_dir / "campaign.json").read_text()), work_dir)
    written = []
    common.write_json(archive / "campaign.json", campaign)
    written.append(archive / "campaign.json")
    for name in FILES[1:]:
        if (work_dir / name).is_file():
            common.write_json(archive / name, json.loads((work_dir / name).read_text()))
            written.append(archive / name)
    for path in summary_files(campaign):
        if (work_dir / path).is_file():
            (archive / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work_dir / path, archive / path)
            written.append(archive / path)
    return written

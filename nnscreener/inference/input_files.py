"""Which scans to predict: input discovery, splitting a job into parts, skipping finished outputs.

Inputs are a folder (or one file) of images in nnU-Net's naming, ``{case}_0000.nii.gz`` (a 4-digit channel
index; nnScreener uses one CT channel), or plain ``{case}.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha`` files.
Outputs are ``{out_dir}/{case}.nii.gz`` (docs/design.md C11).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, TypeVar, Union

from nnscreener.errors import ScreenerError
from nnscreener.io.images import IMAGE_ENDINGS

OUTPUT_ENDING = ".nii.gz"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
T = TypeVar("T")


class InputCase(NamedTuple):
    """One scan to predict: its id and its image files, channel 0 first."""

    case_id: str
    files: Tuple[str, ...]


def image_ending(name: str) -> Optional[str]:
    """The supported image ending of a file name (case-insensitive), or None.

    >>> image_ending("lung_001_0000.NII.GZ"), image_ending("notes.txt")
    ('.nii.gz', None)
    """
    lower = name.lower()
    return next((e for e in IMAGE_ENDINGS if lower.endswith(e)), None)


def _case_and_channel(path: Path) -> Tuple[str, int]:
    ending = image_ending(path.name)
    assert ending is not None
    stem = path.name[: -len(ending)]
    match = _CHANNEL.match(stem)
    if match:
        return match.group("case"), int(match.group("channel"))
    return stem, 0


def discover_cases(input_path: Union[str, Path]) -> List[InputCase]:
    """Lists the cases in an input folder (not recursive), sorted by case id, or the one case of an image file.

    Files named ``{case}_XXXX.ext`` are channel XXXX of ``{case}``; other image files are single-channel cases
    named by their stem. Hidden files and files of other types (``dataset.json``, ...) are ignored.

    Raises:
        ScreenerError: the path does not exist, holds no image, or two files claim the same case and channel.
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise ScreenerError(f"input folder {input_path} does not exist")
    if input_path.is_file():
        if image_ending(input_path.name) is None:
            raise ScreenerError(f"input file {input_path} is not one of the supported types {list(IMAGE_ENDINGS)}")
        case_id, _ = _case_and_channel(input_path)
        return [InputCase(case_id, (str(input_path),))]

    channels: Dict[str, Dict[int, Path]] = {}
    for path in sorted(input_path.iterdir()):
        if path.name.startswith(".") or not path.is_file() or image_ending(path.name) is None:
            continue
        case_id, channel = _case_and_channel(path)
        taken = channels.setdefault(case_id, {})
        if channel in taken:
            raise ScreenerError(f"{taken[channel]} and {path} are both channel {channel} of case {case_id!r}; "
                                f"keep one of them")
        taken[channel] = path
    if not channels:
        raise ScreenerError(f"input folder {input_path} holds no images ({', '.join(IMAGE_ENDINGS)})")
    return [InputCase(case_id, tuple(str(by_channel[c]) for c in sorted(by_channel)))
            for case_id, by_channel in sorted(channels.items())]


def select_part(cases: Sequence[T], num_parts: int, part_id: int) -> List[T]:
    """Every ``num_parts``-th case (an :class:`InputCase` or a case id; sorted by case id) starting at ``part_id``
    (nnU-Net's ``-num_parts`` / ``-part_id`` split).

    The parts of ``part_id = 0 .. num_parts - 1`` are disjoint and together hold every case.
    """
    if num_parts < 1:
        raise ScreenerError(f"-num_parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ScreenerError(f"-part_id must lie in 0..{num_parts - 1} for -num_parts {num_parts}, got {part_id}")
    return list(cases[part_id::num_parts])


def output_file(output_dir: Union[str, Path], case_id: str) -> Path:
    """Where a case's anomaly map goes: ``{output_dir}/{case_id}.nii.gz``."""
    return Path(output_dir) / f"{case_id}{OUTPUT_ENDING}"


def split_finished(cases: Sequence[InputCase], output_dir: Union[str, Path],
                   overwrite: bool) -> Tuple[List[InputCase], List[InputCase]]:
    """Separates the cases still to predict from those whose output exists.

    Returns:
        (to_predict, skipped); with ``overwrite`` nothing is skipped.
    """
    if overwrite:
        return list(cases), []
    to_predict, skipped = [], []
    for case in cases:
        (skipped if output_file(output_dir, case.case_id).is_file() else to_predict).append(case)
    return to_predict, skipped

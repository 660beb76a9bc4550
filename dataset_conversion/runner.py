"""The command line shared by every converter: its arguments and the driver of its ``main``."""
from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from dataset_conversion.case_ids import require_unique_case_ids
from dataset_conversion.parallel import convert_cases, default_num_processes
from dataset_conversion.raw_dataset import DatasetSpec, prepare_output_dataset, write_dataset_files
from dataset_conversion.report import ConversionReport
from nnscreener.cli.common import report_error
from nnscreener.errors import ScreenerError


def converter_prog(spec: DatasetSpec) -> str:
    """The console command of a converter, e.g. ``nnScreener_convert_kits`` (setup.py's entry points)."""
    return f"nnScreener_{spec.module}"


def build_parser(spec: DatasetSpec, module_doc: str) -> argparse.ArgumentParser:
    """The arguments every converter shares: -i SRC -d ID [-n NAME] [-o ROOT] [--overwrite] [-np N]."""
    parser = argparse.ArgumentParser(
        prog=f"python -m dataset_conversion.{spec.module}", description=module_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example: python -m dataset_conversion.{spec.module} -i /data/{spec.default_name} -d 5XX -np 8")
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help="the dataset's folder in its original layout (only read, never modified)")
    parser.add_argument("-d", "--dataset_id", type=int, required=True,
                        help="nnU-Net dataset id (1-999) of the output DatasetXXX_NAME")
    parser.add_argument("-n", "--name", default=spec.default_name,
                        help=f"dataset name in the output folder name (default: {spec.default_name})")
    parser.add_argument("-o", "--output_root", type=Path, default=None,
                        help="where to create DatasetXXX_NAME (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DatasetXXX_NAME folder")
    parser.add_argument("-np", "--num_processes", type=int, default=default_num_processes(),
                        help="worker processes, one case each (default: %(default)s)")
    return parser


def _output_root(args: argparse.Namespace) -> Path:
    if args.output_root is not None:
        return Path(args.output_root)
    from nnscreener.paths import raw_root

    return raw_root()


def run_converter(spec: DatasetSpec, args: argparse.Namespace,
                  find_cases: Callable[[Path], tuple[list[Any], dict[str, str]]],
                  convert_one: Callable[..., dict], options: Optional[Mapping[str, Any]] = None) -> int:
    """The shared driver of a converter's ``main``.

    Args:
        spec: what the converter writes.
        args: parsed arguments of ``build_parser`` (plus the converter's own).
        find_cases: source folder -> (tasks, cases already skipped during discovery: id -> reason). Each task has a
            unique ``case_id``.
        convert_one: ``convert_one(task, dataset=OutputDataset) -> info dict``, picklable, raising ScreenerError
            to skip a case.
        options: converter options recorded in ``conversion.json``.

    Returns:
        The exit code: 0 when at least one case was converted, 1 otherwise (the message says why).
    """
    try:
        if args.num_processes < 1:
            raise ScreenerError(f"-np must be at least 1, got {args.num_processes}")
        source = Path(args.input)
        if not source.is_dir():
            raise ScreenerError(f"source folder {source} does not exist")
        tasks, early_skips = find_cases(source)
        require_unique_case_ids(tasks)
        if not tasks:
            raise ScreenerError(f"no {spec.default_name} cases found in {source}; see --help for the expected "
                                f"layout" + (f" ({len(early_skips)} skipped: {early_skips})" if early_skips else ""))
        dataset = prepare_output_dataset(_output_root(args), args.dataset_id, args.name, spec.split, source,
                                         args.overwrite)
    except ScreenerError as e:
        return report_error(converter_prog(spec), e)
    report = ConversionReport()
    for case_id, reason in early_skips.items():
        report.skip(case_id, reason)
    for result in convert_cases(tasks, partial(convert_one, dataset=dataset), args.num_processes,
                                desc=f"{spec.default_name} -> {dataset.root.name}"):
        report.add(result)
    print(report.summary())
    if not report.converted:
        shutil.rmtree(dataset.root, ignore_errors=True)
        report_error(converter_prog(spec), ScreenerError(f"no case of {source} could be converted; nothing written"))
        return report.exit_code()
    write_dataset_files(dataset, spec, report, source, {**(options or {}), "dataset_id": args.dataset_id})
    print(f"wrote {dataset.root}")
    return report.exit_code()

"""``nnScreener_plan_and_preprocess``: plan and preprocess a raw CT dataset the Screener way, with nnU-Net's
fingerprint extractor, experiment planner and preprocessor.

Steps: check dataset.json and the images while writing body masks (:mod:`nnscreener.planning.unlabeled`) ->
optional nnU-Net integrity check -> nnU-Net fingerprint -> :class:`ScreenerPlanner` -> :class:`ScreenerPreprocessor`.
Everything except the body-mask cache is built in a staging folder under ``$nnUNet_preprocessed`` and moved into
``$nnUNet_preprocessed/DatasetXXX/`` only when every step succeeded, so a failed run leaves the previous state
untouched. The raw dataset folder is only read.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from nnscreener import paths
from nnscreener.config import ScreenerConfig, get_preset, merge, parse_set_overrides, validate
from nnscreener.errors import ScreenerError

PROG = "nnScreener_plan_and_preprocess"


@contextmanager
def _preprocessed_root(path: Path) -> Iterator[None]:
    """Points ``nnUNet_preprocessed`` (read lazily by nnU-Net and inherited by its spawn workers) at ``path``."""
    old = os.environ.get("nnUNet_preprocessed")
    os.environ["nnUNet_preprocessed"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("nnUNet_preprocessed", None)
        else:
            os.environ["nnUNet_preprocessed"] = old


def _commit(staged: Path, target: Path) -> None:
    """Moves every entry of ``staged`` into ``target``, replacing older versions (an existing splits file is
    kept)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(staged.iterdir()):
        dest = target / item.name
        if item.name == "splits_final.json" and dest.exists():
            continue
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".old_{os.getpid()}_{dest.name}")
            os.replace(dest, old)
            os.replace(item, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(item, dest)


def _reusable_fingerprint(path: Path, n_cases: int) -> bool:
    try:
        return len(json.loads(path.read_text())["spacings"]) == n_cases
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _verify_integrity(dataset_dir: Path, num_processes: int) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(dataset_dir), num_processes)
    except (AssertionError, RuntimeError, FileNotFoundError, ValueError) as e:
        raise ScreenerError(f"nnU-Net's dataset integrity check failed (see the messages above): {e}") from None


def plan_and_preprocess(dataset: Union[int, str], config: Optional[ScreenerConfig] = None,
                        num_processes: int = 1, verify_dataset_integrity: bool = False, clean: bool = False,
                        plans_name: Optional[str] = None) -> Path:
    """Plans and preprocesses a raw dataset; the function behind the CLI.

    Args:
        dataset: dataset id (500) or name (``Dataset500_SyntheticCT``) in ``$nnUNet_raw``.
        config: Screener config (preset plus overrides); default preset when None.
        num_processes: worker processes for each step.
        verify_dataset_integrity: also run nnU-Net's integrity check on the images and body masks.
        clean: recompute body masks and the fingerprint instead of reusing those of an earlier run.
        plans_name: defaults to ``nnScreenerPlans`` (preset default) or ``nnScreenerPlans_<preset>``.

    Returns:
        Path of the written plans JSON.

    Raises:
        ScreenerError for bad input (unset env vars, unknown dataset, bad dataset.json, bad images).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnscreener.planning.planner import ScreenerPlanner, plans_name_for_preset
    from nnscreener.planning.preprocessor import ScreenerPreprocessor
    from nnscreener.planning.unlabeled import (BODY_MASK_FOLDER, ScreenerFingerprintExtractor,
                                               derived_dataset_json, list_training_cases, load_raw_dataset_json,
                                               write_body_masks, write_json_atomically)

    config = validate(config if config is not None else get_preset("default"))
    plans_name = plans_name or plans_name_for_preset(config.preset)
    name = paths.dataset_name(dataset)
    raw_dir = paths.raw_root() / name
    if not raw_dir.is_dir():
        raise ScreenerError(f"{name} has no folder in nnUNet_raw ({paths.raw_root()}); nothing to preprocess")
    raw_json = load_raw_dataset_json(raw_dir)
    cases = list_training_cases(raw_dir, raw_json)
    dataset_id = convert_dataset_name_to_id(name)
    num_processes = max(1, int(num_processes))
    print(f"{name}: {len(cases)} training case(s); plans {plans_name!r}; target spacing "
          f"{config.preprocessing.spacing_xyz} mm and patch {config.network.patch_size_xyz} voxels, (x, y, z)")

    target = paths.preprocessed_root() / name
    mask_dir = target / BODY_MASK_FOLDER
    new_target, new_masks = not target.exists(), clean or not mask_dir.exists()
    staging_root = paths.preprocessed_root() / f".nnscreener_staging_{os.getpid()}_{name}"
    staged = staging_root / name
    try:
        if clean and mask_dir.is_dir():
            shutil.rmtree(mask_dir)
        masks, n_written = write_body_masks(cases, mask_dir, raw_json, config.preprocessing.body_threshold_hu,
                                            num_processes, reuse=not clean)
        if staging_root.exists():
            shutil.rmtree(staging_root)
        staged.mkdir(parents=True)
        write_json_atomically(derived_dataset_json(raw_json, cases, masks), staged / "dataset.json")
        fingerprint = target / "dataset_fingerprint.json"
        reuse_fingerprint = not clean and n_written == 0 and _reusable_fingerprint(fingerprint, len(cases))
        if reuse_fingerprint:
            shutil.copy2(fingerprint, staged / fingerprint.name)
        with _preprocessed_root(staging_root):
            if verify_dataset_integrity:
                _verify_integrity(staged, num_processes)
            extract_fingerprint_dataset(dataset_id, ScreenerFingerprintExtractor, num_processes,
                                        check_dataset_integrity=False, clean=not reuse_fingerprint, verbose=False)
            planner = ScreenerPlanner(name, plans_name=plans_name, config=config)
            planner.plan_experiment()
            print(f"Preprocessing {len(cases)} case(s) with {num_processes} worker(s)")
            ScreenerPreprocessor(verbose=False).run(dataset_id, paths.CONFIGURATION, plans_name, num_processes)
        _commit(staged, target)
    except BaseException:
        # leave no trace of a failed first run; a failed rerun keeps the previous results (body masks are a
        # cache of complete files)
        if new_target:
            shutil.rmtree(target, ignore_errors=True)
        elif new_masks:
            shutil.rmtree(mask_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    plans_path = target / f"{plans_name}.json"
    print(f"Plans: {plans_path}\nPreprocessed cases: {target / planner.generate_data_identifier(paths.CONFIGURATION)}")
    return plans_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Plan and preprocess an nnU-Net raw CT dataset for nnScreener: crop to the dense foreground, "
                    "resample to the preset's spacing, clip and rescale HU to [0, 1], 3D CLAHE, body masks. "
                    "Works on unlabeled imagesTr; never writes into nnUNet_raw. Output goes to "
                    "$nnUNet_preprocessed/DatasetXXX/ (plans nnScreenerPlans[_<preset>].json).",
        epilog="Axis order: every *_xyz setting is (x, y, z), as spoken (e.g. --set "
               "preprocessing.spacing_xyz=1.5,1.5,2.25 in mm, --set network.patch_size_xyz=96,96,64 in voxels); the "
               "plans JSON stores spacing and patch_size in nnU-Net's (z, y, x) order.",
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id (e.g. 500) or name (Dataset500_SyntheticCT)")
    p.add_argument("-np", "--num_processes", type=int, default=None,
                   help="worker processes (default: min(nnU-Net's default, CPU count))")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="also run nnU-Net's integrity check (shapes, spacings, NaNs) on images and body masks")
    p.add_argument("--preset", default="default", help="settings preset: default (paper, GPU) or cpu (demo/tests)")
    p.add_argument("--set", dest="overrides", nargs="+", metavar="SECTION.FIELD=VALUE", default=None,
                   help="override config fields, e.g. preprocessing.clahe_clip_limit=0.03 or "
                        "preprocessing.spacing_xyz=2,2,3 (x, y, z)")
    p.add_argument("-p", "--plans_name", default=None,
                   help="plans name (default: nnScreenerPlans for --preset default, nnScreenerPlans_<preset> "
                        "otherwise)")
    p.add_argument("--clean", action="store_true",
                   help="recompute body masks and the dataset fingerprint instead of reusing an earlier run's")
    return p


def _default_num_processes() -> int:
    from nnunetv2.configuration import default_num_processes

    return max(1, min(int(default_num_processes), os.cpu_count() or 1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = validate(merge(get_preset(args.preset), parse_set_overrides(args.overrides)))
        plan_and_preprocess(args.dataset, config,
                            args.num_processes if args.num_processes is not None else _default_num_processes(),
                            args.verify_dataset_integrity, args.clean, args.plans_name)
    except ScreenerError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plan and preprocess a raw CT dataset the Screener way, with nnU-Net's fingerprint extractor, experiment planner
and preprocessor; the library side of ``nnScreener_plan_and_preprocess``.

Steps: check dataset.json and the images while writing body masks (:mod:`nnscreener.planning.unlabeled`) ->
optional nnU-Net integrity check -> nnU-Net fingerprint -> :class:`ScreenerPlanner` -> :class:`ScreenerPreprocessor`.
Everything except the body-mask cache is built in a staging folder under ``$nnUNet_preprocessed`` and moved into
``$nnUNet_preprocessed/DatasetXXX/`` only when every step succeeded, so a failed run leaves the previous state
untouched. The raw dataset folder is only read.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from nnscreener import paths
from nnscreener.config import ScreenerConfig, get_preset, validate
from nnscreener.errors import ScreenerError


@dataclass(frozen=True)
class Staging:
    """Where one run builds its output and what a failed run must remove.

    Attributes:
        target: the final folder ``$nnUNet_preprocessed/DatasetXXX``.
        mask_dir: the body-mask cache inside ``target`` (written in place, not staged).
        staging_root: a private stand-in for ``$nnUNet_preprocessed`` during the nnU-Net steps.
        staged: ``staging_root/DatasetXXX``, the folder that replaces the contents of ``target`` on success.
        new_target: ``target`` did not exist before this run.
        new_masks: the body masks are (re)computed by this run.
    """

    target: Path
    mask_dir: Path
    staging_root: Path
    staged: Path
    new_target: bool
    new_masks: bool


@contextmanager
def preprocessed_root(path: Path) -> Iterator[None]:
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


def commit(staged: Path, target: Path) -> None:
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


def rollback(staging: Staging) -> None:
    """Leaves no trace of a failed first run; a failed rerun keeps the previous results (body masks are a cache
    of complete files, so only masks this run started from scratch are removed)."""
    if staging.new_target:
        shutil.rmtree(staging.target, ignore_errors=True)
    elif staging.new_masks:
        shutil.rmtree(staging.mask_dir, ignore_errors=True)


def reusable_fingerprint(path: Path, n_cases: int) -> bool:
    """True if ``path`` is a readable nnU-Net fingerprint of exactly ``n_cases`` cases."""
    try:
        return len(json.loads(path.read_text())["spacings"]) == n_cases
    except (OSError, ValueError, KeyError, TypeError):
        return False


def verify_integrity(dataset_dir: Path, num_processes: int) -> None:
    """Runs nnU-Net's dataset integrity check on ``dataset_dir``; its failures become a ScreenerError."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(dataset_dir), num_processes)
    except (AssertionError, RuntimeError, FileNotFoundError, ValueError) as e:
        raise ScreenerError(f"nnU-Net's dataset integrity check failed (see the messages above): {e}") from None


STAGING_PREFIX = ".nnscreener_staging_"  # + "<pid>_<dataset name>" under $nnUNet_preprocessed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(root: Path) -> List[Path]:
    """Removes the staging folders under ``root`` whose run is gone (its pid is not alive), as a killed run
    leaves them; folders of live runs stay. Returns the removed folders."""
    removed = []
    for folder in sorted(root.glob(f"{STAGING_PREFIX}*")) if root.is_dir() else []:
        pid = folder.name[len(STAGING_PREFIX):].split("_", 1)[0]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def staging_for(name: str, clean: bool) -> Staging:
    """The staging layout of a run on dataset ``name``, recording what exists before it starts."""
    from nnscreener.planning.unlabeled import BODY_MASK_FOLDER

    target = paths.preprocessed_root() / name
    mask_dir = target / BODY_MASK_FOLDER
    staging_root = paths.preprocessed_root() / f"{STAGING_PREFIX}{os.getpid()}_{name}"
    return Staging(target=target, mask_dir=mask_dir, staging_root=staging_root, staged=staging_root / name,
                   new_target=not target.exists(), new_masks=clean or not mask_dir.exists())


def load_raw_dataset(name: str) -> Tuple[Dict[str, Any], Dict[str, List[str]]]:
    """The raw dataset.json and training cases of ``$nnUNet_raw/name``; ScreenerError if the folder is missing."""
    from nnscreener.planning.unlabeled import list_training_cases, load_raw_dataset_json

    raw_dir = paths.raw_root() / name
    if not raw_dir.is_dir():
        raise ScreenerError(f"{name} has no folder in nnUNet_raw ({paths.raw_root()}); nothing to preprocess")
    raw_json = load_raw_dataset_json(raw_dir)
    return raw_json, list_training_cases(raw_dir, raw_json)


def stage_inputs(staging: Staging, raw_json: Dict[str, Any], cases: Dict[str, List[str]], config: ScreenerConfig,
                 num_processes: int, clean: bool, allow_non_ct: bool = False) -> bool:
    """Writes (or reuses) the body masks and fills a fresh staging folder with the derived dataset.json and, when
    still valid, the previous fingerprint.

    Returns:
        Whether the previous fingerprint was staged for reuse.
    """
    from nnscreener.planning.unlabeled import derived_dataset_json, write_body_masks, write_json_atomically

    if clean and staging.mask_dir.is_dir():
        shutil.rmtree(staging.mask_dir)
    masks, n_written = write_body_masks(cases, staging.mask_dir, raw_json, config.preprocessing.body_threshold_hu,
                                        num_processes, reuse=not clean, allow_non_ct=allow_non_ct)
    if staging.staging_root.exists():
        shutil.rmtree(staging.staging_root)
    staging.staged.mkdir(parents=True)
    write_json_atomically(derived_dataset_json(raw_json, cases, masks), staging.staged / "dataset.json")
    fingerprint = staging.target / "dataset_fingerprint.json"
    reuse = not clean and n_written == 0 and reusable_fingerprint(fingerprint, len(cases))
    if reuse:
        shutil.copy2(fingerprint, staging.staged / fingerprint.name)
    return reuse


def run_nnunet_steps(staging: Staging, name: str, config: ScreenerConfig, plans_name: str, n_cases: int,
                     num_processes: int, verify_dataset_integrity: bool, reuse_fingerprint: bool,
                     allow_non_ct: bool = False) -> Any:
    """Integrity check (optional), fingerprint, planning and preprocessing, all inside the staging folder.

    Returns:
        The :class:`ScreenerPlanner` that wrote the plans.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnscreener.planning.planner import ScreenerPlanner
    from nnscreener.planning.preprocessor import ScreenerPreprocessor
    from nnscreener.planning.unlabeled import ScreenerFingerprintExtractor

    dataset_id = convert_dataset_name_to_id(name)
    with preprocessed_root(staging.staging_root):
        if verify_dataset_integrity:
            verify_integrity(staging.staged, num_processes)
        extract_fingerprint_dataset(dataset_id, ScreenerFingerprintExtractor, num_processes,
                                    check_dataset_integrity=False, clean=not reuse_fingerprint, verbose=False)
        planner = ScreenerPlanner(name, plans_name=plans_name, config=config)
        planner.plan_experiment()
        print(f"Preprocessing {n_cases} case(s) with {num_processes} worker(s)")
        ScreenerPreprocessor(verbose=False, allow_non_ct=allow_non_ct).run(dataset_id, paths.CONFIGURATION,
                                                                           plans_name, num_processes)
    return planner


def plan_and_preprocess(dataset: Union[int, str], config: Optional[ScreenerConfig] = None,
                        num_processes: int = 1, verify_dataset_integrity: bool = False, clean: bool = False,
                        plans_name: Optional[str] = None, allow_non_ct: bool = False) -> Path:
    """Plans and preprocesses a raw dataset; the function behind ``nnScreener_plan_and_preprocess``.

    Args:
        dataset: dataset id (500) or name (``Dataset500_SyntheticCT``) in ``$nnUNet_raw``.
        config: Screener config (preset plus overrides); default preset when None.
        num_processes: worker processes for each step.
        verify_dataset_integrity: also run nnU-Net's integrity check on the images and body masks.
        clean: recompute body masks and the fingerprint instead of reusing those of an earlier run.
        plans_name: defaults to ``nnScreenerPlans`` (preset default) or ``nnScreenerPlans_<preset>``.
        allow_non_ct: accept images whose intensities do not look like CT in Hounsfield units.

    Returns:
        Path of the written plans JSON.

    Raises:
        ScreenerError for bad input (unset env vars, unknown dataset, bad dataset.json, bad images).
    """
    from nnscreener.planning.planner import plans_name_for_preset

    config = validate(config if config is not None else get_preset("default"))
    plans_name = plans_name or plans_name_for_preset(config.preset)
    name = paths.dataset_name(dataset)
    raw_json, cases = load_raw_dataset(name)
    num_processes = max(1, int(num_processes))
    print(f"{name}: {len(cases)} training case(s); plans {plans_name!r}; target spacing "
          f"{config.preprocessing.spacing_xyz} mm and patch {config.network.patch_size_xyz} voxels, (x, y, z)")
    for stale in remove_stale_staging(paths.preprocessed_root()):
        print(f"Removed {stale}, left by a run that was killed")
    staging = staging_for(name, clean)
    try:
        reuse = stage_inputs(staging, raw_json, cases, config, num_processes, clean, allow_non_ct)
        planner = run_nnunet_steps(staging, name, config, plans_name, len(cases), num_processes,
                                   verify_dataset_integrity, reuse, allow_non_ct)
        commit(staging.staged, staging.target)
    except BaseException:
        rollback(staging)
        raise
    finally:
        shutil.rmtree(staging.staging_root, ignore_errors=True)
    plans_path = staging.target / f"{plans_name}.json"
    print(f"Plans: {plans_path}\nPreprocessed cases: "
          f"{staging.target / planner.generate_data_identifier(paths.CONFIGURATION)}")
    return plans_path

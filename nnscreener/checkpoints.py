"""The checkpoint contract of every Screener stage: file names, what each stage's checkpoint holds, saving and loading.

Every checkpoint is a dict of tensors, state dicts and plain Python values (dicts, lists, tuples, str, numbers,
bool, None, ``torch.device``), so it loads with ``torch.load(..., weights_only=True)``, which is the only way it is
ever loaded: a file that needs anything else (e.g. a pickled object of some class) is refused without running any
of its code.

Keys (docs/design.md C6, C9, C10):

- every stage (what :meth:`~nnscreener.trainers.base.ScreenerTrainerBase.save_checkpoint` writes, and what ``--c``
  needs, :data:`RESUME_KEYS`): ``network_weights``, ``<module>_weights`` per extra module, ``optimizer_state``,
  ``lr_scheduler_state``, ``grad_scaler_state`` (or None), ``logging``, ``current_epoch``, ``iteration``,
  ``init_args``, ``trainer_name``, ``stage``, ``variant``, ``screener_config`` (``ScreenerConfig.to_dict()``);
- descriptor / condition (:data:`SSL_KEYS`): also ``in_channels`` (1 or 2), ``ssl_head_weights`` and
  ``masked_input`` (condition networks with the mask token; absent in older checkpoints);
- density (:data:`DENSITY_KEYS`): ``network_weights`` is the whole ScreenerModel; optionally ``embedding_dims`` =
  ``{"descriptor": d, "condition": d}`` and ``masked_input`` = ``{"descriptor": bool, "condition": bool}`` of the
  frozen networks;
- baselines (``baseline_ae``, ``baseline_synthetic``, ``baseline_draem``; :data:`BASELINE_KEYS`):
  ``network_weights`` is the whole scoring model (:mod:`nnscreener.baselines`), ``stage`` names which.
- distill (:data:`DISTILL_KEYS`): ``network_weights`` is the student UNet (nnU-Net's architecture of the student
  plans, deep supervision on, ``out_channels`` seg-layer outputs), ``target_median`` / ``target_iqr`` (one per
  target channel, teacher units: channel 0 is the anomaly map in nats), ``targets``, ``teacher`` (the teacher's
  density folder name) and ``out_channels``.

Beside the distill checkpoint, :data:`PRETRAINED_WEIGHTS` is the student for stock nnU-Net
(``nnUNetv2_train ... -pretrained_weights FILE``, docs/design.md C15): only ``network_weights`` (CPU tensors,
no ``module.`` / ``_orig_mod.`` prefixes) and plain metadata, written by :func:`save_pretrained_weights`.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Sequence, Union

import numpy as np

from nnscreener import stages
from nnscreener.errors import ScreenerError

FINAL_CHECKPOINT = "checkpoint_final.pth"  # written when a stage finishes; what prediction and later stages load
LATEST_CHECKPOINT = "checkpoint_latest.pth"  # written every ``checkpoint_every`` iterations; removed at the end

#: What a descriptor / condition checkpoint needs for :func:`~nnscreener.networks.dense_net.load_dense_net`.
SSL_KEYS = ("network_weights", "screener_config", "in_channels")
#: What a density checkpoint needs for :func:`~nnscreener.model.load_screener_model`.
DENSITY_KEYS = ("stage", "network_weights", "screener_config")
#: What a baseline checkpoint needs for its scoring model (:mod:`nnscreener.baselines`).
BASELINE_KEYS = ("stage", "network_weights", "screener_config")
#: What a distill checkpoint needs for :func:`~nnscreener.distill.predict.load_student`.
DISTILL_KEYS = ("stage", "network_weights", "screener_config", "target_median", "target_iqr", "out_channels")
#: The student's weights for stock ``nnUNetv2_train -pretrained_weights`` (in the distill result folder).
PRETRAINED_WEIGHTS = "nnunet_pretrained_weights.pth"
#: Prefixes that wrappers add to state-dict keys (DDP, torch.compile); never in PRETRAINED_WEIGHTS.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: What ``nnScreener_train --c`` needs to resume a run.
RESUME_KEYS = ("network_weights", "screener_config", "iteration", "lr_scheduler_state", "optimizer_state",
               "logging", "current_epoch", "init_args")

PathLike = Union[str, Path]
if TYPE_CHECKING:
    import torch


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists (recursively through dicts,
    lists and tuples), so it is ``weights_only``-loadable. Tensors and other values are returned as they are."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def save_checkpoint(checkpoint: Mapping[str, Any], path: PathLike) -> None:
    """Writes ``checkpoint`` atomically (a temporary file, then a rename), so a kill during the save never destroys
    the previous file at ``path``."""
    import torch  # imported here: the CLIs read the file names above without paying for torch

    tmp = f"{path}.tmp"
    torch.save(dict(checkpoint), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu",
                    required: Sequence[str] = (), what: str = "an nnScreener checkpoint") -> Dict[str, Any]:
    """Loads a checkpoint with ``torch.load(weights_only=True)`` and checks that it holds ``required``.

    Args:
        path: the ``.pth`` file.
        map_location: where tensors go.
        required: keys the caller needs.
        what: how the error messages name the expected kind, e.g. ``"a density checkpoint"``.

    Raises:
        ScreenerError: naming ``path`` when it is missing, unreadable, holds non-tensor objects (refused without
            executing them), is not a dict, or lacks any of ``required``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ScreenerError(f"missing checkpoint {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ScreenerError(f"{path} is refused: it holds non-tensor objects that only an unsafe load would "
                            f"create, so it is not {what} ({str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ScreenerError(f"{path} is not {what}: it cannot be read as a PyTorch checkpoint ({e})") from e
    return check_keys(checkpoint, required, str(path), what)


def trained_checkpoint(folder: PathLike, checkpoint_name: str, stage: str) -> Path:
    """``folder / checkpoint_name`` if it exists; otherwise ScreenerError listing the folder's checkpoints and the
    command that trains ``stage``."""
    folder = Path(folder)
    path = folder / checkpoint_name
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("checkpoint_*.pth")) if folder.is_dir() else []
        raise ScreenerError(f"missing {path} (found: {found or 'no checkpoints'}); train it first: "
                            f"nnScreener_train DATASET {stage}")
    return path


def check_keys(checkpoint: Any, required: Sequence[str], source: str,
               what: str = "an nnScreener checkpoint") -> Dict[str, Any]:
    """Returns ``checkpoint`` if it is a dict holding ``required``; else a ScreenerError naming ``source``."""
    if not isinstance(checkpoint, dict):
        raise ScreenerError(f"{source} is not {what} (it holds a {type(checkpoint).__name__}, not a dict)")
    missing = [k for k in required if k not in checkpoint]
    if missing:
        raise ScreenerError(f"{source} is not {what} (missing keys {missing})")
    return checkpoint


def load_ssl_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """A descriptor / condition checkpoint (:data:`SSL_KEYS`; a ``stage`` entry, when present, must be one of them).

    Raises:
        ScreenerError: as :func:`load_checkpoint`, or a checkpoint of another stage.
    """
    checkpoint = load_checkpoint(path, map_location, SSL_KEYS, "a descriptor/condition checkpoint")
    stage = checkpoint.get("stage")
    if stage is not None and not (stage in stages.STAGES and stages.get_stage(stage).is_ssl):
        raise ScreenerError(f"{path} is not a descriptor/condition checkpoint (stage {stage!r})")
    return checkpoint


def load_density_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """A density checkpoint (:data:`DENSITY_KEYS`, ``stage == "density"``).

    Raises:
        ScreenerError: as :func:`load_checkpoint`, or a checkpoint of another stage.
    """
    checkpoint = load_checkpoint(path, map_location, (), "a density checkpoint")
    if checkpoint.get("stage") != stages.DENSITY or any(k not in checkpoint for k in DENSITY_KEYS):
        missing = [k for k in DENSITY_KEYS if k not in checkpoint]
        raise ScreenerError(f"{path} is not a density checkpoint (stage {checkpoint.get('stage')!r}"
                            + (f", missing keys {missing})" if missing else ")"))
    return checkpoint


def load_stage_checkpoint(path: PathLike, stage: str,
                          map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """A baseline checkpoint of ``stage`` (:data:`BASELINE_KEYS`, ``checkpoint["stage"] == stage``).

    Raises:
        ScreenerError: as :func:`load_checkpoint`, or a checkpoint of another stage.
    """
    checkpoint = load_checkpoint(path, map_location, (), f"a {stage} checkpoint")
    missing = [k for k in BASELINE_KEYS if k not in checkpoint]
    if checkpoint.get("stage") != stage or missing:
        raise ScreenerError(f"{path} is not a {stage} checkpoint (stage {checkpoint.get('stage')!r}"
                            + (f", missing keys {missing})" if missing else ")"))
    return checkpoint


def load_resume_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """A checkpoint ``--c`` can resume (:data:`RESUME_KEYS`); the stage check against the run is the trainer's."""
    return load_checkpoint(path, map_location, RESUME_KEYS, "an nnScreener checkpoint")


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A state dict with every leading :data:`WRAPPER_PREFIXES` (``module.`` of DDP, ``_orig_mod.`` of
    torch.compile, in any nesting) removed from its keys."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def save_pretrained_weights(network_state: Mapping[str, Any], path: PathLike, metadata: Mapping[str, Any]) -> None:
    """Writes the file stock nnU-Net loads with ``-pretrained_weights`` (docs/design.md C15), atomically.

    Args:
        network_state: the student's state dict (any device, possibly with wrapper prefixes).
        path: the target file, normally ``<distill folder>/PRETRAINED_WEIGHTS``.
        metadata: plain values stored beside the weights (plans name, teacher, targets); nnU-Net ignores them.
    """
    weights = {k: v.detach().cpu().clone() for k, v in strip_wrapper_prefixes(network_state).items()}
    save_checkpoint({"network_weights": weights, "nnscreener": plain(dict(metadata))}, path)


def load_distill_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """A distill checkpoint (:data:`DISTILL_KEYS`, ``stage == "distill"``).

    Raises:
        ScreenerError: as :func:`load_checkpoint`, or a checkpoint of another stage.
    """
    checkpoint = load_checkpoint(path, map_location, (), "a distill checkpoint")
    missing = [k for k in DISTILL_KEYS if k not in checkpoint]
    if checkpoint.get("stage") != stages.DISTILL or missing:
        raise ScreenerError(f"{path} is not a distill checkpoint (stage {checkpoint.get('stage')!r}"
                            + (f", missing keys {missing})" if missing else ")"))
    return checkpoint

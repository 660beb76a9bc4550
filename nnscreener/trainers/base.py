"""Shared training machinery of every Screener stage (descriptor, condition, density) on top of nnUNetTrainer.

What is reused from nnU-Net as is: ``__init__`` (plans and configuration managers, the log file, the logger, the
device and DDP rank), ``do_split`` with ``fold='all'``, ``run_training``'s epoch loop, ``on_epoch_start``,
``on_train_end`` (final checkpoint, dataloader shutdown), ``print_to_log_file``, and ``maybe_load_checkpoint``
for ``--c``. What differs, and is overridden here:

- **Config and folder.** The resolved :class:`~nnscreener.config.ScreenerConfig` comes from the plans'
  ``"nnscreener"`` block (the CLI merges its overrides there first: nnU-Net trainers cannot take extra
  ``__init__`` arguments). Results go to ``nnscreener.paths.stage_folder(...)`` (no ``fold_`` subfolder).
- **Iterations, not epochs.** One nnU-Net "epoch" is ``log_every`` iterations (one log line and progress point);
  ``num_epochs = ceil(num_iterations / log_every)``; ``LATEST_CHECKPOINT`` is written whenever the iteration
  count crosses a multiple of ``checkpoint_every``. No validation.
- **Optimization.** AdamW with a per-iteration warm-up / linear-decay LR (:mod:`nnscreener.trainers.schedule`),
  gradient clipping, bf16 autocast on CUDA (fp16 + GradScaler where bf16 is unsupported), fp32 on CPU.
- **Checkpoints** additionally hold ``lr_scheduler_state``, ``iteration``, ``screener_config``, ``stage``,
  ``variant``, every extra module (``<name>_weights``) and :meth:`checkpoint_extras`; ``--c`` restores them.
  Their contract (names, keys, atomic saving, ``weights_only`` loading) is :mod:`nnscreener.checkpoints`'.
- **Seeds.** Python ``random``, numpy, torch and the loader workers are seeded from the config's ``seed``
  (:mod:`nnscreener.trainers.seeding`): the initial weights at :meth:`initialize`, the rest per rank and resume
  point at :meth:`on_train_start`.
- **NaN guard.** A non-finite loss or gradient norm raises :class:`NonFiniteLossError` before the optimizer
  step; nothing is saved afterwards, so the last good checkpoint stays.
- **Logging.** Every key of :meth:`compute_loss`'s dict is averaged per logging period and added to nnU-Net's
  logger; ``progress.png`` shows one panel per key prefix (``loss/...``, ``health/...``), the learning rate and
  the seconds per iteration.

Hooks a stage implements (each raises ``NotImplementedError`` here):
:meth:`variant_for` (classmethod), :meth:`build_network`, :meth:`build_loader`, :meth:`compute_loss`; and the
class attributes ``stage`` and ``config_section``. Optional: :meth:`build_extra_modules`,
:meth:`checkpoint_extras`, :meth:`trainable_parameters`, and before the trainer exists (:class:`StageSetup`)
:meth:`stage_plans` and :meth:`prepare_data`.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from time import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnscreener import checkpoints, paths, stages
from nnscreener.checkpoints import LATEST_CHECKPOINT
from nnscreener.config import ScreenerConfig, merge, validate
from nnscreener.errors import ScreenerError
from nnscreener.plans import ScreenerPlans, config_from_plans, load_plans
from nnscreener.trainers.folders import (remove_nnunet_folder, remove_stage_folder_without_checkpoint,
                                         require_preprocessed_data)
from nnscreener.trainers.progress import plot_progress, progress_line
from nnscreener.trainers.schedule import Schedule, build_optimizer
from nnscreener.trainers.seeding import run_seed, seed_everything


class NonFiniteLossError(ScreenerError):
    """Training produced a NaN / inf loss or gradient; it stopped without saving."""


def unwrap(module: nn.Module) -> nn.Module:
    """The module a DDP wrapper holds (the module itself when not wrapped)."""
    return module.module if isinstance(module, DDP) else module


class StageSetup:
    """What :func:`nnscreener.trainers.run.train_stage` asks a stage before its trainer exists (classmethods): the
    result folder's variant, the plans it trains on, and data to prepare in the main process."""

    @classmethod
    def variant_for(cls, config: ScreenerConfig) -> str:
        """The result folder's variant for this config, e.g. ``vicreg_d32`` or ``masking_flow``."""
        raise NotImplementedError(f"{cls.__name__} must implement variant_for")

    @classmethod
    def stage_plans(cls, dataset: str, plans_name: str, overrides: Mapping[str, Any]) -> ScreenerPlans:
        """The plans the stage trains on, with the run's resolved config: the dataset's nnScreener plans + the
        run's overrides (the distill stage: nnU-Net plans with the teacher's config)."""
        plans = load_plans(dataset, plans_name)
        return replace(plans, config=validate(merge(plans.config, overrides)))

    @classmethod
    def prepare_data(cls, plans: ScreenerPlans, device: str) -> None:
        """Work in the main process before training starts (the distill stage preprocesses and caches its targets
        here); nothing by default."""


class ScreenerTrainerBase(StageSetup, nnUNetTrainer):
    """Base of the Screener stage trainers; see the module docstring for what it changes in nnUNetTrainer.

    Construct it like any nnU-Net trainer: ``Trainer(plans, "3d_fullres", "all", dataset_json, device)``, where
    ``plans`` is the plans dict whose ``"nnscreener"`` block holds the resolved config.
    """

    stage: str = ""  # "descriptor" | "condition" | "density": the first part of the result folder's name
    config_section: str = ""  # "ssl" | "density": the config section holding the Schedule fields

    # ------------------------------------------------------------------ hooks for the stages
    def build_network(self) -> nn.Module:
        """The module saved as ``network_weights`` (on CPU; the base moves it to the device and wraps DDP)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_network")

    def build_extra_modules(self) -> Dict[str, nn.Module]:
        """Other trained modules, saved as ``<name>_weights`` (e.g. ``{"ssl_head": expander}``). Default none."""
        return {}

    def build_loader(self, identifiers: List[str], seed: int) -> Iterator[Mapping[str, Any]]:
        """An endless iterator of training batches (numpy or torch arrays) for this rank.

        Args:
            identifiers: the preprocessed case ids to sample from.
            seed: differs per rank and per resume, so resumed runs do not replay batches.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_loader")

    def compute_loss(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The scalar loss of one batch (with graph) and the values to log, keyed ``"<panel>/<name>"``.

        Called inside the autocast context; the base does backward, clipping and the optimizer step.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss")

    def checkpoint_extras(self) -> Dict[str, Any]:
        """Extra entries for every checkpoint (e.g. ``{"in_channels": 2}``). Default none."""
        return {}

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Parameters the optimizer updates: those of the network and the extra modules with requires_grad."""
        modules = [self.network, *self.extra_modules.values()]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ construction
    def __init__(self, plans: dict, configuration: str, fold: Union[int, str], dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        assert self.stage in stages.STAGES and self.config_section, "subclasses set stage and config_section"
        plans.setdefault("continue_training", False)  # nnUNetTrainer pops it (run_training's get_trainer_from_args)
        self._pending_log: Optional[list] = []  # messages printed before the stage folder exists
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.screener_config = config_from_plans(self.plans_manager.plans)
        self.schedule = Schedule.from_section(getattr(self.screener_config, self.config_section),
                                              self.config_section)
        require_preprocessed_data(Path(self.preprocessed_dataset_folder), Path(self.output_folder),
                                  self.plans_manager.plans_name, self.plans_manager.dataset_name)
        self._move_to_stage_folder()

        self.initial_lr = self.schedule.learning_rate
        self.weight_decay = self.schedule.weight_decay
        self.enable_deep_supervision = False
        self.num_val_iterations_per_epoch = 0
        self.num_iterations_per_epoch = self.schedule.log_every
        self.iteration = 0
        self.extra_modules: Dict[str, nn.Module] = {}
        self._sync_epochs_with_iterations()

        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.grad_scaler = torch.GradScaler("cuda") if self.device.type == "cuda" and not bf16 else None

    @property
    def variant(self) -> str:
        return type(self).variant_for(self.screener_config)

    @property
    def screener_plans(self) -> ScreenerPlans:
        """The plans as nnScreener's functions take them, with this run's resolved config."""
        return ScreenerPlans(self.plans_manager.dataset_name, self.plans_manager.plans_name,
                             self.plans_manager.plans, self.dataset_json, self.screener_config)

    def _move_to_stage_folder(self) -> None:
        """Replaces nnU-Net's ``Trainer__plans__config/fold_x`` folder with the stage folder (docs/design.md C10)."""
        folder = paths.stage_folder(self.plans_manager.dataset_name, self.stage, self.variant,
                                    self.plans_manager.plans_name)
        self._new_stage_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        remove_nnunet_folder(Path(self.output_folder))
        self.output_folder_base = self.output_folder = str(folder)
        self.log_file = str(folder / Path(self.log_file).name)
        pending, self._pending_log = self._pending_log, None
        for args, kwargs in pending:
            self.print_to_log_file(*args, **kwargs)

    def print_to_log_file(self, *args, also_print_to_console: bool = True, add_timestamp: bool = True) -> None:
        if getattr(self, "_pending_log", None) is not None:
            self._pending_log.append((args, {"also_print_to_console": False, "add_timestamp": add_timestamp}))
            return
        super().print_to_log_file(*args, also_print_to_console=also_print_to_console, add_timestamp=add_timestamp)

    def _sync_epochs_with_iterations(self) -> None:
        """nnU-Net loops over epochs: make the remaining epochs cover exactly the remaining iterations."""
        remaining = max(0, self.schedule.num_iterations - self.iteration)
        self.num_epochs = self.current_epoch + math.ceil(remaining / self.schedule.log_every)

    # ------------------------------------------------------------------ nnU-Net overrides
    def initialize(self) -> None:
        if self.was_initialized:
            raise RuntimeError("initialize() called twice")
        seed_everything(run_seed(self.screener_config.seed))  # the same initial weights on every rank
        self.batch_size = per_rank_batch_size(self.schedule.batch_size, self.config_section,
                                              dist.get_world_size() if self.is_ddp else 1)
        self.network = self.build_network().to(self.device)
        self.extra_modules = {k: m.to(self.device) for k, m in self.build_extra_modules().items()}
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.is_ddp:
            self.network = DDP(self.network, device_ids=[self.local_rank])
            self.extra_modules = {k: DDP(m, device_ids=[self.local_rank]) for k, m in self.extra_modules.items()}
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.was_initialized = True

    def num_loader_workers(self) -> int:
        return loader_processes(self.device)

    def configure_optimizers(self):
        return build_optimizer(self.trainable_parameters(), self.schedule)

    def run_seed(self) -> int:
        """This rank's seed at the current iteration, derived from the config's ``seed``."""
        return run_seed(self.screener_config.seed, self.local_rank, self.iteration)

    def get_dataloaders(self):
        """The training loader (seeded with :meth:`run_seed`: per rank and resume point) and no validation one."""
        identifiers, _ = self.do_split()
        return self.build_loader(list(identifiers), self.run_seed()), None

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """No deep supervision in Screener stages (the dense head consumes every level itself)."""

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Screener stages have no segmentation validation; evaluation is ``nnScreener_evaluate``."""

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        seed_everything(self.run_seed())  # training-time randomness (e.g. density noise), per rank and resume point
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()
        if self.local_rank == 0:
            write_run_files(Path(self.output_folder), self.plans_manager.plans, self.dataset_json,
                            self.screener_config, Path(self.preprocessed_dataset_folder_base))
        self.print_to_log_file(f"{self.stage} training ({self.variant}): {self.schedule.num_iterations} iterations, "
                               f"batch {self.schedule.batch_size} ({self.batch_size} per rank), device "
                               f"{self.device}, resuming at iteration {self.iteration}")
        self.print_to_log_file("config:", self.screener_config.to_json(), add_timestamp=False,
                               also_print_to_console=False)
        if self.is_ddp:
            dist.barrier()

    def on_train_epoch_start(self) -> None:
        self.network.train()
        for module in self.extra_modules.values():
            module.train()
        self.num_iterations_per_epoch = max(0, min(self.schedule.log_every,
                                                   self.schedule.num_iterations - self.iteration))

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def train_step(self, batch: Mapping[str, Any]) -> Dict[str, float]:
        """One optimizer update: loss, NaN guard, backward, clipping, AdamW step, LR schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, logged = self.compute_loss(batch)
        self._stop_unless_finite(loss.detach(), "loss", logged)
        params = self.trainable_parameters()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.schedule.grad_clip)
            self.grad_scaler.step(self.optimizer)  # skips steps with inf gradients (fp16 overflow)
            self.grad_scaler.update()
        else:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.schedule.grad_clip)
            self._stop_unless_finite(grad_norm.detach(), "gradient norm", logged)
            self.optimizer.step()
        self.lr_scheduler.step()
        self.iteration += 1
        return {"loss": float(loss.detach()), **logged}

    def _stop_unless_finite(self, value: torch.Tensor, what: str, logged: Mapping[str, float]) -> None:
        """Raises NonFiniteLossError on every rank if ``value`` is NaN/inf on any rank."""
        finite = torch.isfinite(value).all().to(torch.int32).reshape(1)
        if self.is_ddp:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite.item()):
            raise non_finite_error(value, what, logged, self.iteration + 1, self.stage, self.config_section,
                                   Path(self.output_folder) / LATEST_CHECKPOINT)

    def on_train_epoch_end(self, train_outputs: List[Dict[str, float]]) -> None:
        if not train_outputs:
            return
        keys = list(train_outputs[0])
        means = torch.tensor([np.mean([o[k] for o in train_outputs]) for k in keys], dtype=torch.float64,
                             device=self.device)
        if self.is_ddp:
            dist.all_reduce(means)
            means /= dist.get_world_size()
        for key, value in zip(keys, means.tolist()):
            self._log(key if key != "loss" else "train_losses", value)
        self._log("lrs", self.optimizer.param_groups[0]["lr"])  # the LR reached at the end of the period
        self._log("iterations", self.iteration)

    def _log(self, key: str, value: float) -> None:
        """Logs one value for this period, adding ``key`` to nnU-Net's (fixed-key) local logger if new."""
        self.logger.local_logger.my_fantastic_logging.setdefault(key, [])
        self.logger.log(key, value, self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        """No validation (num_val_iterations_per_epoch = 0)."""

    def on_validation_epoch_end(self, val_outputs: List[dict]) -> None:
        """No validation (num_val_iterations_per_epoch = 0)."""

    def on_epoch_end(self) -> None:
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        logging = self.logger.local_logger.my_fantastic_logging
        done_before = logging.get("iterations", [])[-2:-1]
        iterations_done = self.iteration - (int(done_before[0]) if done_before else 0)
        seconds = logging["epoch_end_timestamps"][-1] - logging["epoch_start_timestamps"][-1]
        self._log("time/seconds_per_iteration", seconds / max(1, iterations_done))
        self.print_to_log_file(progress_line(logging, self.iteration, self.schedule.num_iterations,
                                             self.optimizer.param_groups[0]["lr"]))
        crossed = self.iteration // self.schedule.checkpoint_every > \
            (self.iteration - iterations_done) // self.schedule.checkpoint_every
        if crossed and self.iteration < self.schedule.num_iterations:
            self.save_checkpoint(str(Path(self.output_folder) / LATEST_CHECKPOINT))
        if self.local_rank == 0:
            plot_progress(logging, Path(self.output_folder) / "progress.png", title=f"{self.stage} {self.variant}")
        self.current_epoch += 1

    def run_training(self) -> None:
        """nnU-Net's loop; if it stops on an error (e.g. the NaN guard), the loader's workers are shut down and a
        stage folder this run created is removed when no checkpoint reached it."""
        try:
            super().run_training()
        except BaseException:
            self._close_loader()
            if self.local_rank == 0 and self._new_stage_folder:
                remove_stage_folder_without_checkpoint(Path(self.output_folder))
            raise

    def on_train_end(self) -> None:
        super().on_train_end()
        self._close_loader()

    def _close_loader(self) -> None:
        close_loader(self.dataloader_train)

    # ------------------------------------------------------------------ checkpoints (see nnscreener.checkpoints)
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint keys plus the scheduler, iteration, config and extra modules; written atomically."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoints.save_checkpoint(checkpoint_of(self), filename)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        """Restores network, extra modules, optimizer, scheduler, scaler, logger, epoch and iteration (``--c``)."""
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, dict):
            source = "checkpoint"
            checkpoint = checkpoints.check_keys(filename_or_checkpoint, checkpoints.RESUME_KEYS, source)
        else:
            source = str(filename_or_checkpoint)
            checkpoint = checkpoints.load_resume_checkpoint(filename_or_checkpoint, self.device)
        check_compatible(checkpoint, source, self.stage, self.screener_config)
        restore_checkpoint(self, checkpoint)
        self._sync_epochs_with_iterations()
        if self.iteration >= self.schedule.num_iterations:
            self.print_to_log_file(
                f"nothing to continue: {self.output_folder} already finished its {self.schedule.num_iterations} "
                f"iterations ({source}); pass --overwrite to train it again")
        else:
            self.print_to_log_file(f"resumed from {source} at iteration {self.iteration}")


def loader_processes(device: torch.device) -> int:
    """Background loader processes: nnU-Net's ``nnUNet_n_proc_DA`` rule on a GPU; on a CPU one process, which
    already outpaces the step (benchmarks/train_step.py) without taking cores from the network."""
    if device.type == "cuda":
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        return get_allowed_n_proc_DA()
    return 1


def per_rank_batch_size(batch: int, section: str, world_size: int) -> int:
    """The config's batch size split evenly over ``world_size`` DDP ranks (cross-rank gathering needs equal sizes)."""
    if batch % world_size:
        raise ScreenerError(f"{section}.batch_size={batch} must be divisible by the number of GPUs ({world_size}); "
                            f"set it with --set {section}.batch_size=N")
    return batch // world_size


def write_run_files(folder: Path, plans: Mapping[str, Any], dataset_json: Mapping[str, Any], config: ScreenerConfig,
                    preprocessed_folder: Path) -> None:
    """plans.json, dataset.json (nnU-Net's names), config.json and, when there is one, the dataset fingerprint."""
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "config.json").write_text(config.to_json())
    fingerprint = preprocessed_folder / "dataset_fingerprint.json"
    if fingerprint.is_file():
        shutil.copyfile(fingerprint, folder / "dataset_fingerprint.json")


def non_finite_error(value: torch.Tensor, what: str, logged: Mapping[str, float], iteration: int, stage: str,
                     section: str, latest: Path) -> NonFiniteLossError:
    """The NaN guard's one-line error: what was non-finite at which (1-based) iteration, the last good checkpoint."""
    last_good = f"{latest}" if latest.is_file() else "none yet (no checkpoint was written)"
    return NonFiniteLossError(
        f"non-finite {what} ({float(value.float().flatten()[0])}) at iteration {iteration} of the {stage} stage "
        f"(logged terms: {dict(logged)}). Training stopped without saving; last good checkpoint: {last_good}. "
        f"Resume with --c, e.g. with a lower {section}.learning_rate (--set {section}.learning_rate=...)."
    )


def close_loader(loader: Any) -> None:
    """Stops a loader's background workers (batchgenerators augmenters have ``_finish``)."""
    for name in ("_finish", "close"):
        stop = getattr(loader, name, None)
        if callable(stop):
            stop()
            return


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """State dicts saved from a DDP-wrapped module carry a ``module.`` prefix."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def checkpoint_of(trainer: ScreenerTrainerBase) -> Dict[str, Any]:
    """Everything a stage checkpoint holds (keys: :mod:`nnscreener.checkpoints`), all ``weights_only``-loadable."""
    scaler = trainer.grad_scaler
    return {
        "network_weights": unwrap(trainer.network).state_dict(),
        **{f"{name}_weights": unwrap(m).state_dict() for name, m in trainer.extra_modules.items()},
        "optimizer_state": trainer.optimizer.state_dict(),
        "lr_scheduler_state": trainer.lr_scheduler.state_dict(),
        "grad_scaler_state": scaler.state_dict() if scaler is not None else None,
        "logging": checkpoints.plain(trainer.logger.get_checkpoint()),
        "_best_ema": None,
        "current_epoch": trainer.current_epoch + 1,
        "iteration": trainer.iteration,
        "init_args": checkpoints.plain(trainer.my_init_kwargs),
        "trainer_name": type(trainer).__name__,
        "inference_allowed_mirroring_axes": None,
        "stage": trainer.stage,
        "variant": trainer.variant,
        "screener_config": trainer.screener_config.to_dict(),
        **checkpoints.plain(trainer.checkpoint_extras()),
    }


def restore_checkpoint(trainer: ScreenerTrainerBase, checkpoint: Mapping[str, Any]) -> None:
    """Loads a checkpoint's weights, optimizer, scheduler, scaler, logger, epoch and iteration into ``trainer``."""
    unwrap(trainer.network).load_state_dict(_strip_module_prefix(checkpoint["network_weights"]))
    for name, module in trainer.extra_modules.items():
        unwrap(module).load_state_dict(_strip_module_prefix(checkpoint[f"{name}_weights"]))
    trainer.optimizer.load_state_dict(checkpoint["optimizer_state"])
    trainer.lr_scheduler.load_state_dict(checkpoint["lr_scheduler_state"])
    if trainer.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
        trainer.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
    trainer.logger.load_checkpoint(checkpoint["logging"])
    trainer.my_init_kwargs = checkpoint["init_args"]
    trainer.current_epoch = int(checkpoint["current_epoch"])
    trainer.iteration = int(checkpoint["iteration"])


def check_compatible(checkpoint: Mapping[str, Any], source: str, stage: str, config: ScreenerConfig) -> None:
    """A resumed checkpoint must come from ``stage`` with the same network config; else a ScreenerError."""
    saved = ScreenerConfig.from_dict(checkpoint["screener_config"])
    if checkpoint.get("stage") != stage or saved.network != config.network:
        raise ScreenerError(
            f"{source} was trained as stage {checkpoint.get('stage')!r} with network {saved.network}; this run is "
            f"{stage!r} with {config.network}. Resume with the same settings or --overwrite."
        )

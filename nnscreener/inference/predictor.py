"""Anomaly maps for raw scans: preprocessing, sliding window over a scoring model (Screener's descriptor + condition +
density, or a baseline's model: any ``--method`` of :data:`nnscreener.stages.METHODS`), export.

:class:`ScreenerPredictor` owns the loop, with nnU-Net's engineering: preprocessing and export run in background
worker processes (spawn) so they overlap with the network; patches are cut and moved to the device by a prefetch
thread and batched; the blend is accumulated in float32 on the device and moved to the host once per case (with a
fall-back to a host accumulator when the GPU runs out of memory); autocast only on CUDA. One bad case (unreadable
file, non-3D image) is reported and the others still complete.

Axis order: preprocessed data is (C, z, y, x) in [0, 1] (docs/design.md C3); patches are (B, C', Z, Y, X), C' the
model's ``image_channels`` (1 unless it has the attribute); maps are NLL in nats.
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Empty, Full, Queue
from threading import Event, Thread
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nnscreener import stages
from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.config import BLENDINGS, SCORES, ScreenerConfig
from nnscreener.errors import ScreenerError
from nnscreener.inference.export import map_to_original_geometry, upsample_to_patch, write_map
from nnscreener.inference.input_files import InputCase, discover_cases, output_file, select_part, split_finished
from nnscreener.inference.previews import write_previews
from nnscreener.inference.sliding_window import PaddedVolume, Stitcher, Window, batched, iter_windows, pad_to_patch
from nnscreener.plans import ScreenerPlans, load_plans_file
from nnscreener.workers import exit_with_parent

PREVIEW_FOLDER = "previews"
SETTINGS_FILE = "prediction_settings.json"  # in the output folder: which settings wrote which maps (record_settings)
PreprocessFn = Callable[[Sequence[str], ScreenerPlans], Any]  # -> PreprocessedCase (docs/design.md C4)


def default_preprocess_fn(allow_non_ct: bool = False) -> PreprocessFn:
    """The training preprocessing (docs/design.md C4), imported on first use; ``allow_non_ct`` skips its check that
    the intensities look like CT in HU (a picklable partial, so worker processes can run it)."""
    from nnscreener.planning.preprocessor import preprocess_case

    return functools.partial(preprocess_case, allow_non_ct=True) if allow_non_ct else preprocess_case


@dataclass
class PredictionSummary:
    """What :meth:`ScreenerPredictor.predict_from_files` did.

    Attributes:
        output_dir: the output folder.
        predicted: case ids whose map was written.
        skipped: case ids whose output already existed (no ``overwrite``).
        failed: case id -> error message.
        seconds: wall time of the whole run.
    """

    output_dir: Path
    predicted: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def headline(self) -> str:
        """One line: counts, time per case, and where the maps are."""
        per_case = f", {self.seconds / len(self.predicted):.1f} s/case" if self.predicted else ""
        return (f"nnScreener_predict: {len(self.predicted)} predicted, {len(self.skipped)} skipped (output exists; "
                f"--overwrite redoes them), {len(self.failed)} failed in {self.seconds:.1f} s{per_case}. "
                f"Maps are in {self.output_dir}")

    def failure_lines(self) -> List[str]:
        """One ``FAILED case: message`` line per failed case, sorted by case."""
        return [f"  FAILED {case}: {message}" for case, message in sorted(self.failed.items())]

    def report(self) -> str:
        """The headline and the failure lines, as one text."""
        return "\n".join([self.headline(), *self.failure_lines()])

    def print_report(self) -> None:
        """Prints the headline on stdout and the failure lines on stderr."""
        print(self.headline())
        for line in self.failure_lines():
            print(line, file=sys.stderr)


class _InlineExecutor(Executor):
    """Runs each submitted call at once in the calling thread (``-npp 0`` / ``-nps 0``: no worker processes)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # delivered through the future, like a worker's error
            future.set_exception(e)
        return future


def _executor(num_workers: int) -> Executor:
    if num_workers < 0:
        raise ScreenerError(f"the number of worker processes must be >= 0, got {num_workers}")
    if num_workers == 0:
        return _InlineExecutor()
    return ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))


def _error_message(error: BaseException) -> str:
    if isinstance(error, ScreenerError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _export_case(map_zyx: np.ndarray, body_zyx: np.ndarray, properties: Mapping[str, Any], plans_manager,
                 configuration_manager, out_file: Path, preview_source: Optional[str],
                 window_hu: Tuple[float, float]) -> None:
    """Export worker: the map back to the input's geometry, written; previews from the first input image."""
    original = map_to_original_geometry(map_zyx, body_zyx, properties, plans_manager, configuration_manager)
    write_map(original, properties, out_file)
    if preview_source is not None:
        write_previews(preview_source, original, out_file.parent / PREVIEW_FOLDER / out_file.name[: -len(".nii.gz")],
                       window_hu)


def _prefetched(produce: Callable[[], Iterator[Any]], depth: int = 2) -> Iterator[Any]:
    """Runs the generator ``produce()`` in a background thread, ``depth`` items ahead of the consumer.

    The producer's exceptions are re-raised in the consumer; if the consumer stops early the producer stops too.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = Event()
    done = object()

    def run() -> None:
        try:
            for item in produce():
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((done, None))
        except Exception as e:  # handed to the consumer
            queue.put((done, e))

    thread = Thread(target=run, daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(Empty):
            while True:
                queue.get_nowait()
        thread.join()


class ScreenerPredictor:
    """Predicts Screener anomaly maps (NLL in nats) for raw scans.

    Args:
        model: a ScreenerModel (docs/design.md C9): ``anomaly_map(x (B, 1, Z, Y, X) in [0, 1], origin_zyx (B, 3) int64)
            -> (B, 1, z', y', x')`` pooled NLL. Moved to ``device`` and set to eval mode.
        plans: the plans the model was trained with (preprocessing, patch size, geometry inversion).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        step_size: window stride as a fraction of the patch, in (0, 1]; default: the plans' ``inference.step_size``.
        blending: ``"gaussian"`` (nnU-Net, the authors' code) or ``"uniform"`` (the paper's text); default: the
            plans' ``inference.blending``.
        batch_size: patches per forward; default: the plans' ``inference.batch_size``.
        num_processes_preprocessing: preprocessing worker processes; 0 preprocesses in the calling thread.
        num_processes_export: export (resampling + writing) worker processes; 0 exports in the calling thread.
        progress: show progress bars and print the final summary.
        preprocess_fn: ``(image_files, plans) -> PreprocessedCase`` (docs/design.md C4; fields ``data`` (C, z, y, x),
            ``body_mask`` (z, y, x) bool, ``properties``). Default: nnScreener's training preprocessing. It must be
            a module-level function when worker processes are used.
        allow_non_ct: with the default ``preprocess_fn``, accept scans whose intensities do not look like CT in HU.
        method: the ``nnScreener_predict --method`` the model belongs to (recorded in :data:`SETTINGS_FILE`).
        score: a Screener model's anomaly score (:data:`nnscreener.config.SCORES`, ``nnScreener_predict --score``);
            default: the one the model was built with (the config's ``inference.score``).
    """

    def __init__(self, model: nn.Module, plans: ScreenerPlans, device: Union[str, torch.device] = "cpu",
                 step_size: Optional[float] = None, blending: Optional[str] = None,
                 batch_size: Optional[int] = None, num_processes_preprocessing: int = 2,
                 num_processes_export: int = 2, progress: bool = True,
                 preprocess_fn: Optional[PreprocessFn] = None, allow_non_ct: bool = False,
                 method: str = stages.DEFAULT_METHOD, score: Optional[str] = None) -> None:
        inference = plans.config.inference
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ScreenerError(f"device {device!r} was requested but CUDA is not available; use -device cpu")
        self.step_size = float(inference.step_size if step_size is None else step_size)
        self.blending = inference.blending if blending is None else blending
        self.batch_size = int(inference.batch_size if batch_size is None else batch_size)
        if not 0 < self.step_size <= 1:
            raise ScreenerError(f"step size must lie in (0, 1], got {self.step_size}")
        if self.blending not in BLENDINGS:
            raise ScreenerError(f"blending {self.blending!r} is not one of {list(BLENDINGS)}")
        if self.batch_size < 1:
            raise ScreenerError(f"batch size must be at least 1, got {self.batch_size}")
        self.plans = plans
        self.method = method
        self.plans_manager = plans.plans_manager
        self.configuration_manager = plans.configuration_manager
        self.patch_zyx = tuple(int(p) for p in self.configuration_manager.patch_size)
        self.num_processes_preprocessing = num_processes_preprocessing
        self.num_processes_export = num_processes_export
        self.progress = progress
        self.preprocess_fn = preprocess_fn or default_preprocess_fn(allow_non_ct)
        self.model = model.to(self.device).eval()
        # leading channels of the preprocessed data the model reads (docs/design.md C3, C9): 1 unless it says
        self.image_channels = int(getattr(model, "image_channels", 1))
        if score is not None:
            set_anomaly_score(self.model, score)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @classmethod
    def from_density_folder(cls, density_folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                            checkpoint_name: str = FINAL_CHECKPOINT, **kwargs: Any) -> "ScreenerPredictor":
        """Loads a trained model from its density result folder (docs/design.md C9, C10); ``kwargs`` go to __init__.

        Raises:
            ScreenerError: the folder or the checkpoint does not exist.
        """
        return cls.from_result_folder(density_folder, stages.DEFAULT_METHOD, device, checkpoint_name, **kwargs)

    @classmethod
    def from_result_folder(cls, folder: Union[str, Path], method: str, device: Union[str, torch.device] = "cpu",
                           checkpoint_name: str = FINAL_CHECKPOINT, **kwargs: Any) -> "ScreenerPredictor":
        """Loads the scoring model of ``method`` (:data:`nnscreener.stages.METHODS`) from its stage's result folder
        (``screener``: the density folder; a baseline: its own); ``kwargs`` go to __init__.

        Raises:
            ScreenerError: an unknown method, or the folder or the checkpoint does not exist.
        """
        stage = stages.method_stage(method)
        folder = Path(folder)
        if not folder.is_dir():
            raise ScreenerError(f"no trained {stage.name} model at {folder}: train it with nnScreener_train first")
        if not (folder / checkpoint_name).is_file():
            found = sorted(p.name for p in folder.glob("*.pth"))
            raise ScreenerError(f"checkpoint {folder / checkpoint_name} does not exist (found: {found or 'none'}); "
                                f"finish training or pick another with -chk")
        model, plans_or_config = stage.load_model(folder, device, checkpoint_name)
        return cls(model, _plans_from(plans_or_config, folder), device, method=method, **kwargs)

    # ------------------------------------------------------------------ one volume
    @torch.inference_mode()
    def predict_preprocessed(self, data: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """The blended anomaly map of one preprocessed volume.

        Args:
            data: (C, z, y, x) float intensities in [0, 1] (any size; smaller than a patch is padded with 0); the
                model reads the first :attr:`image_channels` channels (docs/design.md C3, C9).

        Returns:
            (z, y, x) float32 NLL map in nats, on the device (on the host after a GPU out-of-memory fall-back).
        """
        data = torch.as_tensor(data, dtype=torch.float32)
        channels = self.image_channels
        if data.ndim != 4 or data.shape[0] < channels:
            raise ScreenerError(f"expected a preprocessed ({channels}, z, y, x) volume, got shape "
                                f"{tuple(data.shape)}" + (" (the model reads the HU window kept by "
                                "preprocessing.keep_window_channel: preprocess with the model's plans)"
                                if channels > 1 else ""))
        data = data[:channels]
        padded = pad_to_patch(data, self.patch_zyx)
        try:
            blended = self._blend_windows(padded, self.device)
        except torch.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            print("nnScreener_predict: the volume does not fit on the GPU; accumulating on the host instead",
                  file=sys.stderr)
            torch.cuda.empty_cache()
            blended = self._blend_windows(padded, torch.device("cpu"))
        return blended[padded.crop]

    def _blend_windows(self, padded: PaddedVolume, results_device: torch.device) -> torch.Tensor:
        volume = padded.data.to(results_device)  # (C, Z, Y, X), moved once
        stitcher = Stitcher(volume.shape[1:], self.patch_zyx, self.blending, results_device)
        windows = list(iter_windows(volume.shape[1:], self.patch_zyx, self.step_size))
        offset_zyx = torch.tensor(padded.offset_zyx, dtype=torch.int64)

        def patches() -> Iterator[Tuple[List[Window], torch.Tensor, torch.Tensor]]:
            for batch in batched(iter(windows), self.batch_size):
                x = torch.stack([volume[(slice(None), *w)] for w in batch])  # (B, C, Z, Y, X)
                starts = torch.tensor([[w.start for w in window] for window in batch], dtype=torch.int64)
                origin_zyx = starts - offset_zyx  # (B, 3) first voxel in the unpadded volume (negative in padding)
                yield batch, x.to(self.device, non_blocking=True), origin_zyx.to(self.device, non_blocking=True)

        autocast = torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()
        with tqdm(total=len(windows), desc="patches", leave=False, disable=not self.progress) as bar:
            for batch, x, origin_zyx in _prefetched(patches):
                with autocast:
                    pooled = self.model.anomaly_map(x, origin_zyx)  # (B, 1, z', y', x')
                stitcher.add(upsample_to_patch(pooled.float(), self.patch_zyx), batch)  # (B, 1, Z, Y, X)
                bar.update(len(batch))
        return stitcher.result()

    # ------------------------------------------------------------------ one case
    def predict_case(self, image_files: Sequence[Union[str, Path]]) -> np.ndarray:
        """The anomaly map of one scan in its original geometry.

        Args:
            image_files: the scan's image files (one CT channel).

        Returns:
            float32 array in the input's array order as SimpleITK reads it ((z, y, x)); outside the body the
            map's minimum.
        """
        case = self.preprocess_fn([str(f) for f in image_files], self.plans)
        map_zyx = self.predict_preprocessed(case.data).cpu().numpy()
        return map_to_original_geometry(map_zyx, case.body_mask, case.properties, self.plans_manager,
                                        self.configuration_manager)

    # ------------------------------------------------------------------ many cases
    def predict_from_files(self, inputs: Union[str, Path, Sequence[InputCase]], output_dir: Union[str, Path],
                           overwrite: bool = False, num_parts: int = 1, part_id: int = 0,
                           save_png: bool = False) -> PredictionSummary:
        """Writes ``{output_dir}/{case}.nii.gz`` (float32, the input's geometry) for every input case.

        Args:
            inputs: a folder or image file (see :func:`discover_cases`) or a list of ``(case_id, files)``.
            output_dir: created if missing.
            overwrite: redo cases whose output exists (otherwise they are skipped).
            num_parts, part_id: predict only every ``num_parts``-th case starting at ``part_id``.
            save_png: also write axial and coronal overlay previews to ``{output_dir}/previews/``.

        Returns:
            The summary; cases that failed are listed in it and did not stop the others.
        """
        start = time.perf_counter()
        output_dir = Path(output_dir)
        cases = discover_cases(inputs) if isinstance(inputs, (str, Path)) else [InputCase(c, tuple(map(str, f)))
                                                                               for c, f in inputs]
        todo, skipped = split_finished(select_part(cases, num_parts, part_id), output_dir, overwrite)
        summary = PredictionSummary(output_dir, skipped=[c.case_id for c in skipped])
        prepare_output_folder(output_dir)
        try:
            with _executor(self.num_processes_preprocessing) as preprocessing, \
                    _executor(self.num_processes_export) as export:
                self._run_cases(todo, output_dir, save_png, preprocessing, export, summary)
        except BrokenProcessPool as e:
            raise ScreenerError("a background worker process died (most likely out of memory); rerun with fewer "
                                "-npp / -nps workers: finished maps are kept and skipped") from e
        finally:
            record_settings(output_dir / SETTINGS_FILE, self.settings(), summary.predicted)
        summary.seconds = time.perf_counter() - start
        if self.progress:
            summary.print_report()
        return summary

    def _run_cases(self, cases: Sequence[InputCase], output_dir: Path, save_png: bool, preprocessing: Executor,
                   export: Executor, summary: PredictionSummary) -> None:
        exports: Deque[Tuple[str, Future]] = deque()
        window_hu = tuple(self.plans.config.preprocessing.clip_hu)
        for case, preprocessed in tqdm(self._preprocessed_in_order(cases, preprocessing), total=len(cases),
                                       desc="cases", disable=not self.progress):
            try:
                item = preprocessed.result()
                map_zyx = self.predict_preprocessed(item.data).cpu().numpy()  # the one device-to-host copy
            except BrokenProcessPool:
                raise
            except Exception as e:  # one bad case must not stop the others
                summary.failed[case.case_id] = _error_message(e)
                continue
            exports.append((case.case_id, export.submit(
                _export_case, map_zyx, np.asarray(item.body_mask, dtype=bool), item.properties, self.plans_manager,
                self.configuration_manager, output_file(output_dir, case.case_id),
                case.files[0] if save_png else None, window_hu)))
            del item, map_zyx
            while len(exports) > max(1, self.num_processes_export) + 1:  # bound the maps waiting in memory
                self._collect(exports.popleft(), summary)
        while exports:
            self._collect(exports.popleft(), summary)

    def _preprocessed_in_order(self, cases: Sequence[InputCase],
                               executor: Executor) -> Iterator[Tuple[InputCase, Future]]:
        """Yields (case, future of its preprocessing), keeping up to ``workers + 1`` cases preprocessing ahead."""
        ahead = max(1, self.num_processes_preprocessing) + 1
        pending: Deque[Tuple[InputCase, Future]] = deque()
        remaining = iter(cases)

        def submit_next() -> None:
            case = next(remaining, None)
            if case is not None:
                pending.append((case, executor.submit(self.preprocess_fn, list(case.files), self.plans)))

        for _ in range(ahead):
            submit_next()
        while pending:
            case, future = pending.popleft()
            yield case, future
            submit_next()

    @staticmethod
    def _collect(export: Tuple[str, Future], summary: PredictionSummary) -> None:
        case_id, future = export
        try:
            future.result()
        except BrokenProcessPool:
            raise
        except Exception as e:
            summary.failed[case_id] = _error_message(e)
        else:
            summary.predicted.append(case_id)

    def settings(self) -> Dict[str, Any]:
        """The settings that decide the maps this predictor writes (recorded in :data:`SETTINGS_FILE`)."""
        return {
            "method": self.method,
            "dataset": self.plans.dataset_name,
            "plans": self.plans.plans_name,
            "step_size": self.step_size,
            "blending": self.blending,
            "score": getattr(self.model, "score", None),  # None: a model with one score (a baseline, a student)
            "batch_size": self.batch_size,
            "device": str(self.device),
            "screener_config": self.plans.config.to_dict(),
        }


def set_anomaly_score(model: nn.Module, score: str) -> None:
    """Makes a Screener model's ``anomaly_map`` return ``score`` (:data:`nnscreener.config.SCORES`).

    Raises:
        ScreenerError: an unknown score, or a model without a choice of score (a baseline, a distilled student).
    """
    if score not in SCORES:
        raise ScreenerError(f"anomaly score {score!r} is not one of {list(SCORES)}")
    if not hasattr(model, "score"):
        raise ScreenerError(f"--score {score}: only the Screener model (--method {stages.DEFAULT_METHOD}) has a "
                            f"choice of anomaly score")
    model.score = score


def prepare_output_folder(output_dir: Path) -> None:
    """Creates the output folder and checks that files can be written in it.

    Raises:
        ScreenerError naming the path: it is a file, cannot be created, or is not writable.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ScreenerError(f"output path {output_dir} is a file, not a folder; pass a folder to -o")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".nnscreener_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ScreenerError(f"output folder {output_dir} is not writable: {e.strerror or e}") from None


def _recorded_runs(path: Path) -> List[Dict[str, Any]]:
    """The runs recorded in a settings file; an older single-run file is one run without a case list."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(recorded, dict) and isinstance(recorded.get("runs"), list):
        return [r for r in recorded["runs"] if isinstance(r, dict)]
    return [recorded] if isinstance(recorded, dict) else []


def record_settings(path: Path, settings: Dict[str, Any], predicted: Sequence[str]) -> None:
    """Records which settings produced which maps in ``path`` (``{"runs": [{settings..., "cases": [...]}]}``).

    Nothing changes when no map was written. Otherwise the new cases join the run with the same settings (or a new
    run is appended), and they leave the case lists of runs whose maps they replaced; runs left without a case
    are dropped. The file is replaced atomically.
    """
    if not predicted:
        return
    new = set(predicted)
    settings = json.loads(json.dumps(settings))  # tuples become lists, as in the file
    runs = []
    for run in _recorded_runs(path):
        if "cases" in run:
            run["cases"] = sorted(set(run["cases"]) - new)
            if not run["cases"]:
                continue
        runs.append(run)
    same = next((r for r in runs if {k: v for k, v in r.items() if k != "cases"} == settings and "cases" in r), None)
    if same is not None:
        same["cases"] = sorted(set(same["cases"]) | new)
    else:
        runs.append({**settings, "cases": sorted(new)})
    partial = path.with_name(f".partial_{os.getpid()}_{path.name}")
    partial.write_text(json.dumps({"runs": runs}, indent=2))
    os.replace(partial, path)


def _plans_from(plans_or_config: Union[ScreenerPlans, ScreenerConfig], density_folder: Path) -> ScreenerPlans:
    """The plans of a loaded model: as returned, or the folder's plans.json / dataset.json with its config."""
    if isinstance(plans_or_config, ScreenerPlans):
        return plans_or_config
    plans = load_plans_file(density_folder / "plans.json", density_folder / "dataset.json")
    if isinstance(plans_or_config, ScreenerConfig):
        return replace(plans, config=plans_or_config)
    raise TypeError(f"load_screener_model returned {type(plans_or_config).__name__}, expected plans or a config")

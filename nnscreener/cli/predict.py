"""``nnScreener_predict``: anomaly maps for a folder of CT scans with a trained Screener model (or a baseline).

Writes one float32 ``{case}.nii.gz`` per input scan, in the scan's own geometry (size, spacing, origin, direction),
higher = more anomalous (Screener: NLL in nats), with the body's minimum outside the body. ``--method`` picks the
model (:data:`nnscreener.stages.METHODS`: ``screener``, the three-stage model, or a baseline stage).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from nnscreener import paths, stages
from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.cli.common import report_error
from nnscreener.config import BLENDINGS, CONDITIONS, DENSITIES, DISTILL_TARGETS, SCORES
from nnscreener.errors import ScreenerError

PROG = "nnScreener_predict"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Predict anomaly maps (float32 NIfTI, higher = more anomalous; Screener: NLL in "
                                "nats) for CT scans with a trained Screener model or baseline (--method).")
    parser.add_argument("-i", required=True, metavar="IN",
                        help="input folder of images named {case}_0000.nii.gz (nnU-Net) or plain .nii.gz / .nii / "
                             ".nrrd / .mha files, or one image file")
    parser.add_argument("-o", required=True, metavar="OUT", help="output folder ({case}.nii.gz per input case)")
    parser.add_argument("-d", required=True, metavar="DATASET", help="dataset the model was trained on: id or name")
    parser.add_argument("-p", default=paths.DEFAULT_PLANS, metavar="PLANS",
                        help=f"plans name (default {paths.DEFAULT_PLANS}; nnScreenerPlans_cpu for the cpu preset; with "
                             f"--method distilled the student's nnU-Net plans)")
    parser.add_argument("--method", default=stages.DEFAULT_METHOD, choices=tuple(stages.METHODS),
                        help=f"which trained model scores the scans (default {stages.DEFAULT_METHOD}: descriptor + "
                             f"condition + density; distilled: the student of nnScreener_train DATASET distill -p "
                             f"PLANS, one UNet; the others: the baseline stage of the same name)")
    parser.add_argument("--variant", default="",
                        help="baselines: the result folder's variant (baseline_ae: its loss, l1 or l2; "
                             "baseline_synthetic: its target, blend or visible); default: the only one trained for "
                             "these plans")
    parser.add_argument("--targets", default="map", choices=DISTILL_TARGETS,
                        help="--method distilled: the student's targets, as given to nnScreener_train (default map)")
    parser.add_argument("--teacher_plans", default=paths.DEFAULT_PLANS,
                        help="--method distilled: the teacher's plans, as given to nnScreener_train; -p then names "
                             f"the student's nnU-Net plans (default {paths.DEFAULT_PLANS})")
    parser.add_argument("--condition", default="masking", choices=CONDITIONS, help="condition of the density model")
    parser.add_argument("--density", default="flow", choices=DENSITIES, help="density model")
    parser.add_argument("--descriptor_variant", default="",
                        help="the density model was trained on this non-default descriptor variant (as given to "
                             "nnScreener_train --descriptor_variant)")
    parser.add_argument("--condition_variant", default="",
                        help="the density model was trained on this non-default condition variant")
    parser.add_argument("-chk", default=FINAL_CHECKPOINT, metavar="CHECKPOINT",
                        help=f"checkpoint file in the model's result folder (default {FINAL_CHECKPOINT})")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda"),
                        help="device for the networks (default: cuda when available, else cpu)")
    parser.add_argument("-num_parts", type=int, default=1, help="split the job into this many parts (default 1)")
    parser.add_argument("-part_id", type=int, default=0,
                        help="which part this process predicts, 0..num_parts-1 (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists (default: skip)")
    parser.add_argument("--save_png", action="store_true",
                        help="also write axial and coronal overlay previews to OUT/previews/")
    parser.add_argument("--dicom_map", action="store_true",
                        help="for DICOM inputs also write the map as a DICOM Parametric Map, CASE_map_pm.dcm")
    parser.add_argument("--allow_non_ct", action="store_true",
                        help="score scans whose intensities do not look like CT in Hounsfield units (8-bit pixels, "
                             "no air or soft tissue, values in 0..1); by default they fail with a message")
    add_inference_arguments(parser)
    add_findings_arguments(parser)
    return parser


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """How the maps are computed and written: sliding window, blending, score, worker processes."""
    group = parser.add_argument_group("inference", "sliding-window inference (defaults: the plans' inference "
                                                   "settings)")
    group.add_argument("-step_size", type=float, default=None,
                       help="sliding-window step as a fraction of the patch, in (0, 1] (default: the plans', 0.5)")
    group.add_argument("--blending", default=None, choices=BLENDINGS,
                       help="how overlapping patch maps are combined (default: the plans', gaussian as the "
                            "authors' code; uniform: the paper's plain averaging)")
    group.add_argument("--score", default=None, choices=SCORES,
                       help="anomaly score of --method screener (default: the model's config, nll): nll = "
                            "-log q(y | c) as in the paper; latent = 0.5 ||z||^2, the same without the density's "
                            "log-volume term, so homogeneous tissue does not score lower than textured tissue")
    group.add_argument("-npp", type=int, default=2,
                       help="preprocessing worker processes (default 2; 0 = in the main process)")
    group.add_argument("-nps", type=int, default=2,
                       help="export worker processes: resampling to the input's geometry and writing (default 2)")


def add_findings_arguments(parser: argparse.ArgumentParser) -> None:
    """The findings options (docs/design.md C13, C14)."""
    group = parser.add_argument_group("findings", "a findings mask and table per scan at an operating point")
    group.add_argument("--threshold", default=None, metavar="SPEC",
                       help="fpr=RATE (voxel false-positive rate on normal scans, e.g. fpr=1e-3), fp_ml=ML "
                            "(false-positive mL per normal scan, e.g. fp_ml=10) or value=SCORE (nats); fpr and fp_ml "
                            "need nnScreener_calibrate first. Writes CASE_findings.nii.gz/.json/.csv beside "
                            "CASE.nii.gz")
    group.add_argument("--min_volume_ml", type=float, default=0.0, help="drop findings smaller than this (mL)")
    group.add_argument("--organ_masks", default=None, metavar="FOLDER",
                       help="folder of organ label maps {case}.nii.gz in each scan's geometry (e.g. TotalSegmentator "
                            "output; names from FOLDER/labels.json or dataset.json): each finding gets its organ")
    group.add_argument("--overwrite_findings", action="store_true",
                       help="redo the findings files of maps that exist (e.g. at another --threshold) without "
                            "predicting the maps again")
    group.add_argument("--report", action="store_true",
                       help="also write CASE_findings.png (top findings in three planes, the table) and "
                            "findings_index.html")


def density_folder(dataset: str, condition: str, density: str, plans_name: str, descriptor_variant: str = "",
                   condition_variant: str = "") -> Path:
    """The density result folder of this variant; raises ScreenerError naming it (and the trained ones) if absent."""
    variant = stages.density_variant(condition, density, descriptor_variant, condition_variant)
    folder = paths.stage_folder(dataset, stages.DENSITY, variant, plans_name)
    if not folder.is_dir():
        trained = sorted(p.name for p in folder.parent.glob(f"{stages.DENSITY}__*") if p.is_dir())
        raise ScreenerError(f"no trained model {folder} (density stage, --condition {condition} --density {density}, "
                            f"plans {plans_name}); trained density models of this dataset: {trained or 'none'}")
    return folder


def baseline_folder(dataset: str, stage: str, variant: str, plans_name: str) -> Path:
    """The result folder of a baseline stage: of ``variant``, or the only one trained for these plans; raises
    ScreenerError naming what is there when that is not one folder."""
    pattern = paths.stage_folder(dataset, stage, variant or "*", plans_name)
    trained = sorted(p for p in pattern.parent.glob(pattern.name) if p.is_dir())
    if len(trained) != 1:
        found = [p.name for p in trained] or sorted(p.name for p in pattern.parent.glob(f"{stage}__*") if p.is_dir())
        need = "pick one with --variant" if len(trained) > 1 else f"train it with nnScreener_train DATASET {stage}"
        raise ScreenerError(f"no single trained model {pattern} ({stage} stage, plans {plans_name}); {need}. "
                            f"Trained {stage} models of this dataset: {found or 'none'}")
    return trained[0]


def model_folder(args: argparse.Namespace) -> Path:
    """The result folder whose model ``--method`` scores with."""
    stage = stages.method_stage(args.method)
    if stage.name == stages.DENSITY:
        return density_folder(args.d, args.condition, args.density, args.p, args.descriptor_variant,
                              args.condition_variant)
    if stage.name == stages.DISTILL:
        return distill_folder(args.d, args.targets, args.condition, args.density, args.teacher_plans, args.p,
                              args.descriptor_variant, args.condition_variant)
    return baseline_folder(args.d, stage.name, args.variant, args.p)


def distill_folder(dataset: str, targets: str, condition: str, density: str, teacher_plans: str, plans_name: str,
                   descriptor_variant: str = "", condition_variant: str = "") -> Path:
    """The distill result folder of this student; raises ScreenerError naming it (and the trained ones) if absent."""
    teacher = stages.density_variant(condition, density, descriptor_variant, condition_variant)
    folder = paths.stage_folder(dataset, stages.DISTILL, stages.distill_variant(targets, teacher, teacher_plans),
                                plans_name)
    if not folder.is_dir():
        trained = sorted(p.name for p in folder.parent.glob(f"{stages.DISTILL}__*") if p.is_dir())
        raise ScreenerError(f"no distilled model {folder} (-p {plans_name} --teacher_plans {teacher_plans} --targets "
                            f"{targets} --condition {condition} --density {density}); distilled models of this "
                            f"dataset: {trained or 'none'}")
    return folder


def build_predictor(args: argparse.Namespace):
    """The predictor of ``args.method`` with the command line's options: the sliding-window predictor of a stage's
    scoring model (:attr:`nnscreener.stages.Stage.model_loader`), or the distilled student's own predictor."""
    if args.score is not None and args.method != stages.DEFAULT_METHOD:
        raise ScreenerError(f"--score applies to --method {stages.DEFAULT_METHOD} only, not {args.method}")
    folder, options = model_folder(args), dict(
        step_size=args.step_size, blending=args.blending, num_processes_preprocessing=args.npp,
        num_processes_export=args.nps, allow_non_ct=args.allow_non_ct)
    if args.method == stages.get_stage(stages.DISTILL).method:
        from nnscreener.distill.predict import student_predictor

        return student_predictor(folder, resolve_device(args.device), args.chk, **options)
    from nnscreener.inference.predictor import ScreenerPredictor

    if args.score is not None:
        options["score"] = args.score
    return ScreenerPredictor.from_result_folder(folder, args.method, resolve_device(args.device), args.chk,
                                                **options)


def resolve_device(name: Optional[str]) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ScreenerError("-device cuda was requested but CUDA is not available; use -device cpu")
    return name


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="nnscreener_dicom_") as staging:
            return run(args, Path(staging))
    except ScreenerError as e:
        return report_error(PROG, e)


def run(args: argparse.Namespace, staging: Path) -> int:
    """Predicts (and derives findings); returns the exit code. DICOM series are staged as NIfTI in ``staging``."""
    if not Path(args.i).exists():
        raise ScreenerError(f"input folder {args.i} does not exist")
    from nnscreener.inference.dicom_inputs import collect_inputs, write_series_index

    predictor = build_predictor(args)
    settings = findings_settings_from_args(args, predictor)
    inputs = collect_inputs(args.i, staging, args.num_parts, args.part_id)  # this part's cases only
    for message in inputs.skipped:
        print(f"{PROG}: {message}", file=sys.stderr)
    summary = predictor.predict_from_files(inputs.cases, args.o, overwrite=args.overwrite, save_png=args.save_png)
    outputs_failed = {}
    if inputs.series:
        write_series_index(Path(args.o), inputs.series)
    if inputs.series and args.dicom_map:
        from nnscreener.findings.dicom_out import write_dicom_maps

        outputs_failed.update(write_dicom_maps(Path(args.o), summary.predicted, summary.skipped, inputs.series,
                                                args.overwrite))
        for case, message in sorted(outputs_failed.items()):
            print(f"  FAILED {case}: {message}", file=sys.stderr)
    if settings is not None:
        outputs_failed.update(write_findings_from_args(args, summary, settings, inputs))
    return 1 if summary.failed or outputs_failed else 0


def findings_settings_from_args(args: argparse.Namespace, predictor):
    """The findings settings of ``--threshold`` (None without it), resolved before any map is predicted."""
    if args.threshold is None:
        for flag, value in (("--organ_masks", args.organ_masks), ("--report", args.report or None),
                            ("--overwrite_findings", args.overwrite_findings or None)):
            if value is not None:
                raise ScreenerError(f"{flag} needs --threshold")
        return None
    from nnscreener.findings.apply import findings_settings

    return findings_settings(args.threshold, model_folder(args), args.chk, predictor, args.min_volume_ml,
                             Path(args.organ_masks) if args.organ_masks else None)


def write_findings_from_args(args: argparse.Namespace, summary, settings, inputs) -> dict:
    """Writes the run's findings, DICOM-SEGs and report; prints what was written; returns the cases that failed."""
    from nnscreener.findings.apply import findings_lines, write_run_outputs

    written, failed = write_run_outputs(Path(args.o), summary.predicted, summary.skipped, settings,
                                        args.overwrite or args.overwrite_findings,
                                        {c.case_id: c.files[0] for c in inputs.cases}, inputs.series, args.report)
    lines = findings_lines(settings, written, failed)
    print(lines[0])
    for line in lines[1:]:
        print(line, file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())

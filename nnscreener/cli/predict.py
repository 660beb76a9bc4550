"""``nnScreener_predict``: anomaly maps for a folder of CT scans with a trained Screener model.

Writes one float32 ``{case}.nii.gz`` per input scan, in the scan's own geometry (size, spacing, origin, direction),
NLL in nats, with the body's minimum outside the body.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from nnscreener import paths, stages
from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.cli.common import report_error
from nnscreener.config import BLENDINGS, CONDITIONS, DENSITIES, DISTILL_TARGETS
from nnscreener.errors import ScreenerError

PROG = "nnScreener_predict"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Predict Screener anomaly maps (float32 NIfTI, NLL in nats) for CT scans.")
    parser.add_argument("-i", required=True, metavar="IN",
                        help="input folder of images named {case}_0000.nii.gz (nnU-Net) or plain .nii.gz / .nii / "
                             ".nrrd / .mha files, or one image file")
    parser.add_argument("-o", required=True, metavar="OUT", help="output folder ({case}.nii.gz per input case)")
    parser.add_argument("-d", required=True, metavar="DATASET", help="dataset the model was trained on: id or name")
    parser.add_argument("-p", default=paths.DEFAULT_PLANS, metavar="PLANS",
                        help=f"plans name (default {paths.DEFAULT_PLANS}; nnScreenerPlans_cpu for the cpu preset; with "
                             f"--method distilled the student's nnU-Net plans)")
    parser.add_argument("--method", default=stages.DEFAULT_PREDICT_METHOD, choices=sorted(stages.PREDICT_METHODS),
                        help="which trained model writes the maps: screener (the three-stage model, default) or "
                             "distilled (the student of nnScreener_train DATASET distill -p PLANS: one UNet)")
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
    parser.add_argument("-step_size", type=float, default=None,
                        help="sliding-window step as a fraction of the patch, in (0, 1] (default: the plans', 0.5)")
    parser.add_argument("--blending", default=None, choices=BLENDINGS,
                        help="how overlapping patch maps are combined (default: the plans', uniform as in the paper)")
    parser.add_argument("-npp", type=int, default=2,
                        help="preprocessing worker processes (default 2; 0 = in the main process)")
    parser.add_argument("-nps", type=int, default=2,
                        help="export worker processes: resampling to the input's geometry and writing (default 2)")
    parser.add_argument("-num_parts", type=int, default=1, help="split the job into this many parts (default 1)")
    parser.add_argument("-part_id", type=int, default=0,
                        help="which part this process predicts, 0..num_parts-1 (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists (default: skip)")
    parser.add_argument("--save_png", action="store_true",
                        help="also write axial and coronal overlay previews to OUT/previews/")
    parser.add_argument("--allow_non_ct", action="store_true",
                        help="score scans whose intensities do not look like CT in Hounsfield units (8-bit pixels, "
                             "no air or soft tissue, values in 0..1); by default they fail with a message")
    return parser


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


def _screener_predictor(args: argparse.Namespace, device: str, **options):
    from nnscreener.inference.predictor import ScreenerPredictor

    folder = density_folder(args.d, args.condition, args.density, args.p, args.descriptor_variant,
                            args.condition_variant)
    return ScreenerPredictor.from_density_folder(folder, device, args.chk, **options)


def _distilled_predictor(args: argparse.Namespace, device: str, **options):
    from nnscreener.distill.predict import student_predictor

    folder = distill_folder(args.d, args.targets, args.condition, args.density, args.teacher_plans, args.p,
                            args.descriptor_variant, args.condition_variant)
    return student_predictor(folder, device, args.chk, **options)


#: The predictor of each stage that writes maps (``--method`` -> stage: :data:`nnscreener.stages.PREDICT_METHODS`).
PREDICTORS = {stages.DENSITY: _screener_predictor, stages.DISTILL: _distilled_predictor}


def build_predictor(args: argparse.Namespace):
    """The predictor of ``args.method`` with the command line's options."""
    return PREDICTORS[stages.predict_stage(args.method)](
        args, resolve_device(args.device), step_size=args.step_size, blending=args.blending,
        num_processes_preprocessing=args.npp, num_processes_export=args.nps, allow_non_ct=args.allow_non_ct)


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
        if not Path(args.i).exists():
            raise ScreenerError(f"input folder {args.i} does not exist")
        predictor = build_predictor(args)
        summary = predictor.predict_from_files(args.i, args.o, overwrite=args.overwrite, num_parts=args.num_parts,
                                               part_id=args.part_id, save_png=args.save_png)
    except ScreenerError as e:
        return report_error(PROG, e)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())

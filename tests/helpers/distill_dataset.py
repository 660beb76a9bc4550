"""A tiny unlabeled dataset ready for the distill stage: raw phantoms, nnScreener plans and preprocessed cases (the
teacher's), a randomly initialised trained-looking teacher (docs/design.md C9/C10), and moved nnU-Net plans for the
student (``nnUNetPlans``: DefaultPreprocessor, CTNormalization, another spacing, its own small PlainConvUNet)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Tuple

import torch

from nnscreener import paths, stages
from nnscreener.checkpoints import FINAL_CHECKPOINT, save_checkpoint
from nnscreener.config import merge, parse_set_overrides
from nnscreener.plans import ScreenerPlans, load_plans
from tests.helpers.fake_dataset import plain_conv_unet_architecture
from tests.planning.test_preprocessor import plan_phantom_dataset

DATASET_ID = 500
TEACHER_OVERRIDES = ["network.patch_size_xyz=16,16,8", "density.condition=none", "density.density=gaussian",
                     "density.gaussian_hidden=8", "inference.batch_size=4"]
STUDENT_PLANS = "nnUNetPlans"
STUDENT_SPACING_ZYX = (3.0, 2.0, 2.5)  # mm; the phantoms are 2.5 x 1.5 x 1.5 mm (z, y, x), 20 x 40 x 40 voxels
STUDENT_PATCH_ZYX = (16, 16, 16)
CT_INTENSITIES = {"0": {"mean": -300.0, "median": 40.0, "std": 400.0, "min": -1000.0, "max": 300.0,
                        "percentile_00_5": -1000.0, "percentile_99_5": 250.0}}


def preprocess_teacher_cases(plans: ScreenerPlans) -> None:
    """ScreenerPreprocessor over the derived dataset's cases, in this process (docs/design.md C3)."""
    from nnscreener.planning.preprocessor import ScreenerPreprocessor
    from nnscreener.planning.unlabeled import load_derived_dataset

    _, cases = load_derived_dataset(plans.dataset_name)
    plans.data_dir.mkdir(parents=True, exist_ok=True)
    for case, entry in cases.items():
        ScreenerPreprocessor(verbose=False, config=plans.config.preprocessing).run_case_save(
            str(plans.data_dir / case), entry["images"], entry["label"], plans.plans_manager,
            plans.configuration_manager, plans.dataset_json)


def write_teacher(plans: ScreenerPlans, seed: int = 0) -> Path:
    """A randomly initialised Gaussian density model without condition (a valid density checkpoint, C9)."""
    from nnscreener.model import build_screener_model
    from nnscreener.networks.dense_net import build_dense_net

    torch.manual_seed(seed)
    descriptor = build_dense_net(plans, 1, 8)
    model = build_screener_model(plans.config, descriptor)
    with torch.no_grad():  # the Gaussian initialises itself from its first batch, as in training (a trained model's
        x = torch.rand(2, plans.config.preprocessing.channels, *plans.config.network.patch_size_zyx)
        model.train()(x, torch.zeros(2, 3, dtype=torch.int64))
    model.eval()  # state has initialized = True, so every later forward is the same function)
    d = plans.config.density
    folder = paths.stage_folder(plans.dataset_name, stages.DENSITY, stages.density_variant(d.condition, d.density),
                                plans.plans_name)
    folder.mkdir(parents=True)
    save_checkpoint({"stage": stages.DENSITY, "network_weights": model.state_dict(),
                     "screener_config": plans.config.to_dict(), "embedding_dims": {"descriptor": 8}},
                    folder / FINAL_CHECKPOINT)
    (folder / "plans.json").write_text(json.dumps(plans.plans))
    (folder / "dataset.json").write_text(json.dumps(plans.dataset_json))
    return folder


def write_student_plans(teacher: ScreenerPlans, transpose=(0, 1, 2)) -> Path:
    """nnU-Net plans as the labelled dataset's would be after nnUNetv2_move_plans_between_datasets."""
    plans = copy.deepcopy(teacher.plans)
    plans.pop("nnscreener")
    plans.pop("nnscreener_axis_order", None)
    plans["plans_name"] = STUDENT_PLANS
    plans["transpose_forward"] = list(transpose)
    plans["transpose_backward"] = [list(transpose).index(i) for i in range(3)]
    plans["foreground_intensity_properties_per_channel"] = CT_INTENSITIES
    fullres = plans["configurations"][paths.CONFIGURATION]
    fullres.update({"data_identifier": f"{STUDENT_PLANS}_{paths.CONFIGURATION}",
                    "preprocessor_name": "DefaultPreprocessor", "normalization_schemes": ["CTNormalization"],
                    "use_mask_for_norm": [False], "spacing": list(STUDENT_SPACING_ZYX),
                    "patch_size": list(STUDENT_PATCH_ZYX), "batch_size": 2,
                    "architecture": plain_conv_unet_architecture(STUDENT_PATCH_ZYX, STUDENT_SPACING_ZYX, 4, 16)})
    plans["configurations"] = {paths.CONFIGURATION: fullres}
    path = teacher.preprocessed_dir / f"{STUDENT_PLANS}.json"
    path.write_text(json.dumps(plans, indent=2))
    return path


def make_distill_dataset(env: dict, monkeypatch=None) -> Tuple[ScreenerPlans, Path]:
    """Plans, preprocessed teacher cases, a teacher and student plans; returns the teacher plans and folder.
    With ``monkeypatch``, the distill stage preprocesses in this process (``nnUNet_def_n_proc=1``)."""
    if monkeypatch is not None:
        monkeypatch.setenv("nnUNet_def_n_proc", "1")
    overrides = parse_set_overrides(TEACHER_OVERRIDES)
    planned = plan_phantom_dataset(env, "cpu", overrides, DATASET_ID)
    plans = load_plans(DATASET_ID, planned["plans_name"])
    plans = ScreenerPlans(plans.dataset_name, plans.plans_name, plans.plans, plans.dataset_json,
                          merge(plans.config, overrides))
    preprocess_teacher_cases(plans)
    # as nnScreener_plan_and_preprocess leaves it: the raw dataset.json beside the plans, masks in their folder
    raw_json = Path(env["nnUNet_raw"]) / plans.dataset_name / "dataset.json"
    (plans.preprocessed_dir / "dataset.json").write_text(raw_json.read_text())
    plans = ScreenerPlans(plans.dataset_name, plans.plans_name, plans.plans, json.loads(raw_json.read_text()),
                          plans.config)
    folder = write_teacher(plans)
    write_student_plans(plans)
    return plans, folder


def train_tiny_student(teacher: ScreenerPlans, targets: str = "map", iterations: int = 4, **kwargs) -> Path:
    """``nnScreener_train 500 distill -p nnUNetPlans`` for a few iterations on the dataset above; its folder."""
    from nnscreener.trainers.run import train_stage

    overrides = {"distill": {"num_iterations": iterations, "log_every": 2, "checkpoint_every": 2,
                             "warmup_iterations": 1, "teacher_plans": teacher.plans_name, "targets": targets},
                 "density": {"condition": "none", "density": "gaussian"}}
    return train_stage(str(DATASET_ID), "distill", STUDENT_PLANS, overrides, "cpu", **kwargs)

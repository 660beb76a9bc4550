"""The student is nnU-Net's network of the student plans, and its exported weights load into stock nnU-Net
(``load_pretrained_weights``, nnScreener not importable) with every non-seg-layer tensor unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nnscreener.checkpoints import PRETRAINED_WEIGHTS, load_checkpoint, save_pretrained_weights
from nnscreener.distill.student import build_student, load_student_plans
from nnscreener.errors import ScreenerError
from tests.helpers.distill_dataset import STUDENT_PLANS, make_distill_dataset, train_tiny_student

# Runs in a fresh interpreter where importing nnscreener fails: what a clinic's stock nnU-Net does with the file.
STOCK_NNUNET = r'''
import json, sys, torch

class RefuseNnscreener:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "nnscreener":
            raise ImportError("nnscreener is not installed here")

sys.meta_path.insert(0, RefuseNnscreener())
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

plans, dataset_json, weights = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
pm = PlansManager(plans)
cm = pm.get_configuration("3d_fullres")
heads = pm.get_label_manager(dataset_json).num_segmentation_heads
net = nnUNetTrainer.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json), heads, True)
before = {k: v.clone() for k, v in net.state_dict().items()}
load_pretrained_weights(net, weights)
saved = torch.load(weights, weights_only=True)["network_weights"]
after = net.state_dict()
print(json.dumps({
    "heads": heads,
    "keys": len(after),
    "not_transferred": sorted(k for k in after if not (k in saved and torch.equal(after[k], saved[k]))),
    "seg_layers_untouched": all(torch.equal(after[k], before[k]) for k in after if ".seg_layers." in k),
    "nnscreener_imported": any(m.split(".")[0] == "nnscreener" for m in sys.modules),
}))
'''


@pytest.fixture
def teacher(nnunet_env, monkeypatch):
    plans, _ = make_distill_dataset(nnunet_env, monkeypatch)
    return plans


def test_exported_weights_load_into_stock_nnunet_with_only_seg_layers_skipped(teacher, tmp_path):
    folder = train_tiny_student(teacher)
    weights = folder / PRETRAINED_WEIGHTS
    content = load_checkpoint(weights, required=("network_weights",))  # weights-only loadable
    state = content["network_weights"]
    assert all(t.device.type == "cpu" for t in state.values())
    assert not [k for k in state if k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k]
    final = load_checkpoint(folder / "checkpoint_final.pth")["network_weights"]
    assert all(torch.equal(state[k], final[k]) for k in final)

    # the labelled dataset: same plans (moved), three classes instead of the student's one target channel
    labelled = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1, "vessel": 2},
                "numTraining": 5, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(labelled))
    plans_file = teacher.preprocessed_dir / f"{STUDENT_PLANS}.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", STOCK_NNUNET, str(plans_file), str(tmp_path / "dataset.json"),
                          str(weights)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["heads"] == 3 and not report["nnscreener_imported"]
    assert report["not_transferred"], "the seg layers (3 classes vs 1 target) cannot be transferred"
    assert all(".seg_layers." in k for k in report["not_transferred"]), report["not_transferred"]
    assert report["seg_layers_untouched"]
    assert report["keys"] - len(report["not_transferred"]) == len([k for k in state if ".seg_layers." not in k])


def test_student_has_the_architecture_nnunet_builds_for_the_plans(teacher):
    """Same keys and shapes as nnU-Net's network of the plans for another class count, except the seg layers."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = load_student_plans("500", STUDENT_PLANS, {"distill": {"teacher_plans": teacher.plans_name}})
    student = build_student(plans, out_channels=5).state_dict()
    cm = plans.plans_manager.get_configuration("3d_fullres")
    reference = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                       cm.network_arch_init_kwargs_req_import, 1, 2, allow_init=True,
                                       deep_supervision=True).state_dict()
    assert student.keys() == reference.keys()
    differing = [k for k in student if student[k].shape != reference[k].shape]
    assert differing and all(".seg_layers." in k for k in differing)
    assert all(student[k].shape[0] == 5 for k in differing if k.endswith(".weight"))


def test_wrapper_prefixes_never_reach_the_exported_file(tmp_path):
    state = {"module._orig_mod.encoder.w": torch.ones(2), "_orig_mod.decoder.seg_layers.0.weight": torch.zeros(1),
             "plain.b": torch.full((3,), 2.0)}
    save_pretrained_weights(state, tmp_path / "w.pth", {"plans": "nnUNetPlans"})
    saved = load_checkpoint(tmp_path / "w.pth")
    assert set(saved["network_weights"]) == {"encoder.w", "decoder.seg_layers.0.weight", "plain.b"}
    assert torch.equal(saved["network_weights"]["plain.b"], torch.full((3,), 2.0))
    assert saved["nnscreener"] == {"plans": "nnUNetPlans"}


def test_copied_or_missing_student_plans_are_refused_with_the_move_command(teacher):
    overrides = {"distill": {"teacher_plans": teacher.plans_name}}
    with pytest.raises(ScreenerError, match="nnUNetv2_move_plans_between_datasets"):
        load_student_plans("500", "nnUNetResEncPlans", overrides)
    with pytest.raises(ScreenerError, match="are nnScreener plans"):  # -p forgotten: the default plans
        load_student_plans("500", teacher.plans_name, overrides)
    path = teacher.preprocessed_dir / f"{STUDENT_PLANS}.json"
    plans = json.loads(path.read_text())
    plans["dataset_name"] = "Dataset501_Labelled"
    path.write_text(json.dumps(plans))
    with pytest.raises(ScreenerError, match="copied, not moved"):
        load_student_plans("500", STUDENT_PLANS, overrides)

"""One few-label fine-tuning run of benchmarks/few_label.py: stock nnU-Net's trainer on a labelled fold, from scratch
or from a distilled student's weights, then its segmentations of the held-out test scans.

Runs in its own process (``nnUNet_results`` chosen by the caller, one root per initialisation and seed), so the
caller measures its CPU time. The trainer is nnU-Net's ``nnUNetTrainer`` with only its schedule shortened to CPU
size (epochs x iterations per epoch; the poly learning-rate decay spans the shortened run); the weights are loaded
with nnU-Net's own ``maybe_load_checkpoint`` (``load_pretrained_weights``: every key but ``.seg_layers.``), exactly
what ``nnUNetv2_train ... -pretrained_weights FILE`` does. Segmentation: ``nnUNetPredictor`` with Gaussian
blending, step 0.5, no mirroring (CPU budget), the final weights.

    python benchmarks/few_label_finetune.py -d 501 -p PLANS -f FOLD --epochs E --iterations I --seed S \\
        [--pretrained_weights FILE] --test_images imagesTs -o SEGMENTATIONS
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.run.run_training import maybe_load_checkpoint
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

CONFIGURATION = "3d_fullres"


class FewLabelTrainer(nnUNetTrainer):
    """nnU-Net's trainer with a CPU-sized schedule; everything else (loss, augmentation, SGD, poly LR) is stock.
    The schedule is set on the class (:attr:`schedule`) before it is instantiated."""

    schedule = (4, 25, 2)  # epochs, training iterations per epoch, validation iterations per epoch

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.schedule


def seed_everything(seed: int) -> None:
    """Python, numpy and torch generators (nnU-Net's single-process augmentation draws from numpy's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(dataset: str, plans: str, fold: int, pretrained_weights: Optional[str]) -> nnUNetTrainer:
    """Builds the trainer from the preprocessed folder's plans and dataset.json (as ``nnUNetv2_train``; nnU-Net
    looks trainer classes up by name only inside its own package, so this one is instantiated directly), loads the
    pretrained weights (if any) with nnU-Net's own function, trains."""
    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(int(dataset) if dataset.isdigit() else dataset)
    plans_dict = load_json(str(folder / f"{plans}.json"))
    plans_dict["continue_training"] = False  # the trainer pops this flag, which nnUNetv2_train sets
    trainer = FewLabelTrainer(plans_dict, CONFIGURATION, fold, load_json(str(folder / "dataset.json")),
                              torch.device("cpu"))
    maybe_load_checkpoint(trainer, False, False, pretrained_weights)
    trainer.run_training()
    return trainer


def segment(trainer: nnUNetTrainer, test_images: str, output: str) -> None:
    """Segments every scan of ``test_images`` with the trained network into ``output`` (nnU-Net's file names).
    The predictor is initialised from the trainer in memory, as nnU-Net's own final validation does (loading the
    fold from disk would look the trainer class up by name inside nnU-Net's package)."""
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    Path(output).mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(test_images, output, save_probabilities=False, overwrite=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--dataset", required=True, help="the labelled dataset (id or name)")
    p.add_argument("-p", "--plans", required=True, help="its nnU-Net plans identifier")
    p.add_argument("-f", "--fold", type=int, required=True, help="fold of splits_final.json (its labelled cases)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    p.add_argument("--val_iterations", type=int, default=2, help="validation iterations per epoch (default 2)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--pretrained_weights", help="a distilled student's nnunet_pretrained_weights.pth")
    p.add_argument("--test_images", required=True, help="held-out scans to segment")
    p.add_argument("-o", "--output", required=True, help="folder for their segmentations")
    args = p.parse_args(argv)
    FewLabelTrainer.schedule = (args.epochs, args.iterations, args.val_iterations)
    seed_everything(args.seed)
    trainer = train(args.dataset, args.plans, args.fold, args.pretrained_weights)
    segment(trainer, args.test_images, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

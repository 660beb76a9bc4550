"""Few-label fine-tuning benchmark: stock nnU-Net trained on 2, 5 and 10 labelled scans from scratch and from the
student distilled from a trained Screener model, for the same number of iterations, with several seeds; test Dice
and lesion-wise detection rate on held-out labelled scans (README, Fine-tuning).

Steps, each run once and recorded in ``W/ledger.json`` (a rerun skips finished steps, so the campaign resumes):

1. ``W`` mirrors the trained Screener's folders (``--screener_root``: nnScreener_demo's work folder by default,
   or a quality campaign's with ``--screener_results W/results/<setup>/seed0``): the unlabeled dataset's entries
   there are links, so nothing is written into them.
2. A labelled synthetic dataset (``generate_labelled_dataset``: ``--n_labelled`` scans with binary lesion labels
   and ``--n_test`` held-out ones, another seed than the unlabeled data), planned and preprocessed by nnU-Net
   (``nnUNetv2_plan_and_preprocess -gpu_memory_target G``), its UNet's widths capped at ``--max_width``
   (``features_per_stage``; topology and patch as nnU-Net planned; the only edit, for the CPU budget), and a
   ``splits_final.json`` whose fold i trains on the first ``--labels[i]`` labelled scans.
3. Its plans moved onto the unlabeled dataset (``nnUNetv2_move_plans_between_datasets``) and the student distilled
   there (``nnScreener_train UNLABELLED distill -p PLANS_from<id>``, ``--distill_iterations`` steps).
4. For each initialisation (scratch, distilled), seed and label count: benchmarks/few_label_finetune.py (stock
   ``nnUNetTrainer``, ``--epochs`` x ``--iterations`` steps) and its test segmentations.
5. Per run: mean Dice over the test scans (a scan with an empty prediction scores 0), lesions detected (a
   26-connected label component touched by the prediction) and false-positive components per scan, kept in
   ``W/summary.json`` under the run's budget; the table is the mean over seeds +- half their range, with CPU
   minutes.

With ``--figures DIR`` (the repository keeps its runs in ``benchmarks/figures/few_label``) the scores and the ledger,
a few kB without models or segmentations, are also exported to ``DIR``, and a run already there is not run again: a
later session on a fresh machine extends the table instead of starting it over. An archive of other settings
(``SETTING_KEYS``) is refused by name.

    nnScreener_demo                                   # or any trained Screener model, see --screener_root
    python benchmarks/few_label.py --work_dir W [--seeds 0 1] [--labels 2 5 10] [--figures DIR] -o W/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import quality_archive  # noqa: E402

INITS = ("scratch", "distilled")
PLANS = "nnUNetPlansFewLabel"
#: The settings a run's scores belong to besides its key (budget, initialisation, labels, seed): an archive of
#: other settings is refused.
SETTING_KEYS = ("labelled_id", "n_labelled", "n_val", "n_test", "data_seed", "distill_iterations",
                "gpu_memory_target", "max_width")


# ---------------------------------------------------------------------------------------------- metrics
def dice(prediction: np.ndarray, label: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(prediction.sum()) + int(label.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, label).sum()) / total


def lesion_detection(prediction: np.ndarray, label: np.ndarray) -> Tuple[int, int, int]:
    """(lesions, detected lesions, false-positive components): 26-connected components of the label touched by
    the prediction, and components of the prediction that touch no lesion."""
    structure = np.ones((3, 3, 3), dtype=bool)
    lesions, n_lesions = ndimage.label(label, structure)
    found = np.unique(lesions[prediction & (lesions > 0)])
    blobs, n_blobs = ndimage.label(prediction, structure)
    true_blobs = np.unique(blobs[prediction & label])
    return n_lesions, int(found.size), n_blobs - int(true_blobs[true_blobs > 0].size)


def score_run(segmentations: Path, labels: Path) -> Dict[str, float]:
    """Mean Dice, detection rate (pooled over lesions) and false-positive components per scan of one run."""
    dices, n_lesions, n_found, n_fp = [], 0, 0, 0
    for label_file in sorted(labels.glob("*.nii.gz")):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))) > 0
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(segmentations / label_file.name))) > 0
        dices.append(dice(prediction, label))
        lesions, found, fp = lesion_detection(prediction, label)
        n_lesions, n_found, n_fp = n_lesions + lesions, n_found + found, n_fp + fp
    return {"dice": float(np.mean(dices)), "detection": n_found / max(n_lesions, 1), "lesions": n_lesions,
            "fp_per_scan": n_fp / len(dices), "scans": len(dices)}


# ---------------------------------------------------------------------------------------------- setup
def nnunet_command(name: str) -> str:
    """An nnU-Net console script: beside this interpreter (a virtual environment not on PATH) or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def mirror(source_root: Path, dataset: str, target_root: Path) -> None:
    """``target_root/dataset`` as a real folder whose entries link to ``source_root/dataset``'s: what the benchmark
    writes there (student data, targets cache, moved plans, the student) stays in ``W``."""
    target = target_root / dataset
    target.mkdir(parents=True, exist_ok=True)
    for entry in (source_root / dataset).iterdir():
        link = target / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry.resolve())


def cap_widths(plans_file: Path, max_width: int) -> None:
    """Caps the 3d_fullres UNet's ``features_per_stage`` at ``max_width`` (nnU-Net doubles them per stage)."""
    plans = json.loads(plans_file.read_text())
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(int(f), max_width) for f in kwargs["features_per_stage"]]
    plans_file.write_text(json.dumps(plans, indent=2))


def write_splits(preprocessed: Path, cases: List[str], label_counts: Sequence[int], n_val: int) -> None:
    """Fold i trains on the first ``label_counts[i]`` cases; every fold validates on the last ``n_val``."""
    val = cases[len(cases) - n_val:]
    splits = [{"train": cases[:k], "val": val} for k in label_counts]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits, indent=2))


# ---------------------------------------------------------------------------------------------- figures
def settings_of(args: argparse.Namespace) -> Dict[str, Any]:
    return {key: getattr(args, key) for key in SETTING_KEYS}


def budget_of(args: argparse.Namespace) -> str:
    """The fine-tuning schedule in every run's key and step id: another schedule is another run, never a reused one."""
    return f"it{args.epochs}x{args.iterations}"


def run_key(budget: str, init: str, labels: int, seed: int) -> str:
    return f"{budget}/{init}/labels{labels}/seed{seed}"


def read_summary(path: Path) -> Dict[str, Any]:
    """``{"settings": {...}, "runs": {run key: scores}}`` of a work dir or an archive. A summary of before the
    archive (runs keyed without their budget, no settings) reads as empty: a work dir scores its runs again from
    their segmentations."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {"settings": data.get("settings", {}), "runs": data.get("runs", {})}


def archived_runs(archive: Path, settings: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The runs kept in ``archive``; refuses (by the file's name) an archive of other settings."""
    archived = read_summary(archive / "summary.json")
    quality_archive.check_dataset(archived["settings"], settings, archive, keys=SETTING_KEYS, file="summary.json")
    return archived["runs"]


def export_figures(work: Path, archive: Path) -> List[Path]:
    """Copies ``work``'s summary.json (which holds the archive's runs too) into ``archive`` and merges the ledgers
    (``work``'s records win). No models, no segmentations."""
    common.write_json(archive / "summary.json", read_summary(work / "summary.json"))
    common.write_json(archive / "ledger.json", quality_archive.merged_ledger(archive, work))
    return [archive / "summary.json", archive / "ledger.json"]


class FewLabelCampaign:
    """The benchmark's steps in ``--work_dir`` (module docstring), each recorded in its ledger. Runs found in
    ``earlier`` (an archive's) and not in the work dir are taken from there, not run again."""

    def __init__(self, args: argparse.Namespace, earlier: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        self.args = args
        self.work = args.work_dir.resolve()
        self.ledger = common.Ledger(self.work / "ledger.json")
        self.runs = {**(earlier or {}), **read_summary(self.work / "summary.json")["runs"]}
        self.prepared = False
        self.raw, self.pre, self.res = (self.work / n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
        self.source_raw = args.screener_root / "nnUNet_raw"
        self.source_pre = args.screener_root / "nnUNet_preprocessed"
        self.source_res = args.screener_results or args.screener_root / "nnUNet_results"
        self.unlabelled = ""  # the trained Screener's dataset folder, found by prepare()
        self.labelled = f"Dataset{args.labelled_id:03d}_SyntheticCTLabelled"

    def env(self, results: Optional[Path] = None) -> Dict[str, str]:
        return common.child_env(self.args.threads, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.pre),
                                nnUNet_results=str(results or self.res),
                                nnUNet_n_proc_DA=str(self.args.num_processes),
                                nnUNet_def_n_proc=str(self.args.num_processes))

    def step(self, step_id: str, argv: Sequence[str], env: Dict[str, str], **extra) -> Dict[str, float]:
        done = self.ledger.get(step_id)
        if done is not None:
            return done
        print(f"[run] {step_id}", flush=True)
        timing = common.run_child(argv, env, self.work / "logs" / (step_id.replace("/", "_") + ".log"))
        self.ledger.record(step_id, **timing, machine=common.machine_label(), **extra)
        print(f"[done] {step_id}: {timing['wall_s'] / 60:.1f} min wall, {timing['cpu_s'] / 60:.1f} min CPU",
              flush=True)
        return timing

    def prepare(self) -> None:
        """Steps 1-3 (module docstring), once, before the first run that must be trained."""
        if self.prepared:
            return
        self.prepared = True
        a = self.args
        found = sorted(self.source_raw.glob(f"Dataset{a.dataset_id:03d}_*"))
        if not found:
            raise SystemExit(f"no Dataset{a.dataset_id:03d}_* in {self.source_raw}: run nnScreener_demo first or "
                             f"pass --screener_root")
        self.unlabelled = found[0].name
        mirror(self.source_raw, self.unlabelled, self.raw)
        mirror(self.source_pre, self.unlabelled, self.pre)
        mirror(self.source_res, self.unlabelled, self.res)
        if not (self.raw / self.labelled).is_dir():
            from nnscreener.synthetic.generator import generate_labelled_dataset

            generate_labelled_dataset(self.raw, a.labelled_id, n_labelled=a.n_labelled, n_test=a.n_test,
                                      seed=a.data_seed, num_processes=a.num_processes)
        self.step("plan_labelled", [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(a.labelled_id),
                                    "-c", "3d_fullres", "-np", str(a.num_processes), "-npfp", str(a.num_processes),
                                    "-gpu_memory_target", str(a.gpu_memory_target), "-overwrite_plans_name", PLANS],
                  self.env())
        cap_widths(self.pre / self.labelled / f"{PLANS}.json", a.max_width)
        cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (self.raw / self.labelled / "imagesTr").iterdir())
        write_splits(self.pre / self.labelled, cases, a.labels, a.n_val)
        moved = f"{PLANS}_from{a.labelled_id}"
        if not (self.pre / self.unlabelled / f"{moved}.json").is_file():
            self.step("move_plans", [nnunet_command("nnUNetv2_move_plans_between_datasets"), "-s",
                                     str(a.labelled_id), "-t", str(a.dataset_id), "-sp", PLANS, "-tp", moved],
                      self.env())
        done = self.ledger.get("distill")
        if done is not None and done.get("iterations") != a.distill_iterations:
            raise SystemExit(f"{self.work} holds a student of {done.get('iterations')} steps, not "
                             f"--distill_iterations {a.distill_iterations}: use another --work_dir")
        self.step("distill", common.cli_argv("nnscreener.cli.train", str(a.dataset_id), "distill", "-p", moved,
                                             "--teacher_plans", a.teacher_plans, "-device", "cpu", "--seed", "0",
                                             "--num_iterations", str(a.distill_iterations)), self.env(),
                  iterations=a.distill_iterations)

    def student_weights(self) -> Path:
        found = sorted((self.res / self.unlabelled).glob(f"distill__*__{PLANS}_from{self.args.labelled_id}/"
                                                         "nnunet_pretrained_weights.pth"))
        if len(found) != 1:
            raise SystemExit(f"expected one distilled student for {PLANS}_from{self.args.labelled_id}, found {found}")
        return found[0]

    def finetune(self, init: str, seed: int, fold: int) -> Dict[str, object]:
        """The run's scores: from its segmentations in the work dir, else from a summary (the archive's), else
        trained now."""
        a = self.args
        budget = budget_of(a)
        root = self.work / "finetune" / budget / f"{init}_seed{seed}"
        out = root / "segmentations" / f"labels{a.labels[fold]}"
        step_id = f"finetune/{budget}/{init}/seed{seed}/labels{a.labels[fold]}"
        key = run_key(budget, init, a.labels[fold], seed)
        done = self.ledger.get(step_id)
        if done is not None and out.is_dir():
            return {**score_run(out, self.raw / self.labelled / "labelsTs"), "cpu_s": done["cpu_s"]}
        if key in self.runs:
            return self.runs[key]
        if done is not None:
            raise SystemExit(f"{self.ledger.path} records {step_id} but its segmentations {out} are gone and no "
                             f"summary holds its scores: remove the record to run it again")
        self.prepare()
        argv = [*common.cli_argv("few_label_finetune", "-d", str(a.labelled_id), "-p", PLANS, "-f", str(fold),
                                 "--epochs", str(a.epochs), "--iterations", str(a.iterations), "--seed", str(seed),
                                 "--test_images", str(self.raw / self.labelled / "imagesTs"), "-o", str(out)),
                *(["--pretrained_weights", str(self.student_weights())] if init == "distilled" else [])]
        env = self.env(root / "nnUNet_results")
        env["nnUNet_n_proc_DA"] = "0"  # augmentation in the training process: its CPU time is the run's
        env["PYTHONPATH"] = os.pathsep.join([str(common.REPO / "benchmarks"), env["PYTHONPATH"]])
        timing = self.step(step_id, argv, env)
        return {**score_run(out, self.raw / self.labelled / "labelsTs"), "cpu_s": timing["cpu_s"]}

    def run(self) -> Dict[str, Dict[str, object]]:
        """Every requested run's scores by run key; the work dir's summary.json keeps them with all earlier ones."""
        for fold, k in enumerate(self.args.labels):
            for init in INITS:
                for seed in self.args.seeds:
                    self.runs[run_key(budget_of(self.args), init, k, seed)] = self.finetune(init, seed, fold)
                    common.write_json(self.work / "summary.json",
                                      {"settings": settings_of(self.args), "runs": self.runs})
        return self.runs


def table(results: Dict[str, Dict[str, object]], budget: str, labels: Sequence[int], seeds: Sequence[int]) -> str:
    """Markdown: per label count and initialisation, mean +- half range over the seeds of the runs of ``budget``."""
    def cell(values: List[float], digits: int = 3) -> str:
        return f"{np.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"

    rows = ["| labelled scans | initialisation | n | test Dice | lesions detected | false-positive components / scan "
            "| CPU min (fine-tune + segment) |", "|---:|---|---:|---:|---:|---:|---:|"]
    for k in labels:
        for init in INITS:
            runs = [results[key] for key in (run_key(budget, init, k, s) for s in seeds) if key in results]
            if runs:
                rows.append(f"| {k} | {init} | {len(runs)} | {cell([r['dice'] for r in runs])} | "
                            f"{cell([r['detection'] for r in runs])} | {cell([r['fp_per_scan'] for r in runs], 1)} | "
                            f"{cell([r['cpu_s'] / 60 for r in runs], 1)} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", type=Path, required=True)
    p.add_argument("--screener_root", type=Path, default=Path("nnscreener_demo"),
                   help="folder with nnUNet_raw, nnUNet_preprocessed (and nnUNet_results) of a trained Screener "
                        "model on the unlabeled dataset: nnScreener_demo's --work_dir (default ./nnscreener_demo) "
                        "or a quality campaign's --work_dir")
    p.add_argument("--screener_results", type=Path,
                   help="its nnUNet_results, if not SCREENER_ROOT/nnUNet_results (a campaign: W/results/SETUP/seedN)")
    p.add_argument("--teacher_plans", default="nnScreenerPlans_cpu", help="plans of the trained Screener model")
    p.add_argument("-d", "--dataset_id", type=int, default=500, help="the unlabeled dataset (default 500)")
    p.add_argument("--labelled_id", type=int, default=501, help="id of the generated labelled dataset (default 501)")
    p.add_argument("--n_labelled", type=int, default=12, help="labelled scans generated (default 12)")
    p.add_argument("--n_val", type=int, default=2, help="of those, validation scans of every fold (default 2)")
    p.add_argument("--n_test", type=int, default=6, help="held-out test scans (default 6, one per lesion kind)")
    p.add_argument("--data_seed", type=int, default=1, help="seed of the labelled dataset (default 1)")
    p.add_argument("--labels", type=int, nargs="+", default=[2, 5, 10], help="labelled scans per fold")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=16,
                   help="nnU-Net epochs of every fine-tuning run (default 16: at 4 most runs on 2 labelled scans "
                        "segment nothing; benchmarks/RESULTS.md)")
    p.add_argument("--iterations", type=int, default=25, help="iterations per epoch (default 25)")
    p.add_argument("--distill_iterations", type=int, default=300, help="steps of the student (default 300)")
    p.add_argument("--gpu_memory_target", type=float, default=0.4, help="nnU-Net planner's target, GB (patch size)")
    p.add_argument("--max_width", type=int, default=64, help="cap of the UNet's features per stage (default 64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("-o", "--output", type=Path, help="markdown file for the table (default: print only)")
    p.add_argument("--figures",
                   help="folder of the runs' scores and ledger without models (the repository's: "
                        "benchmarks/figures/few_label): runs found there are not run again, and this invocation's "
                        "are added to it (default, or 'none': no such folder)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_val >= args.n_labelled or max(args.labels) > args.n_labelled - args.n_val:
        raise SystemExit("--labels must fit in --n_labelled minus --n_val scans")
    archive = Path(args.figures).resolve() if args.figures not in (None, "none") else None
    earlier = archived_runs(archive, settings_of(args)) if archive else {}
    campaign = FewLabelCampaign(args, earlier)
    results = campaign.run()
    if archive:
        export_figures(campaign.work, archive)
        print(f"[figures] scores and ledger of {len(results)} runs in {archive}", flush=True)
    text = table(results, budget_of(args), args.labels, args.seeds)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

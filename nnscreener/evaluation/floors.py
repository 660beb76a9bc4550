"""Floor scorers that every results table shows beside the model: intensity-only and random.

- ``IntensityFloor``: minus the log of the HU histogram density of the training images' body voxels (nats per
  HU), so HU values that are rare in the body of normal training scans score high. Learned by streaming over the
  training files one at a time; fixed bins from -1024 to 3071 HU (values outside are clipped into the end bins),
  Laplace smoothing (a pseudo-count per bin) so unseen values get a finite, high score.
- ``RandomFloor``: uniform noise in [0, 1), seeded per case.

Both write their maps through the predictor's own exporter (``nnscreener.inference.export``, docs/design.md C11): one
float32 ``{case}.nii.gz`` per input image with the input's exact size, spacing, origin and direction; voxels
outside the body (``body_mask_from_hu``) hold the minimum of the map inside the body. Run as
``python -m nnscreener.evaluation.floors {intensity,random} -i IMAGES -o OUT [-tr TRAIN_IMAGES]``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnscreener.errors import ScreenerError
from nnscreener.evaluation.sampling import read_volume, strip_ending
from nnscreener.inference.export import fill_outside_body, write_map
from nnscreener.inference.input_files import discover_cases, output_file
from nnscreener.planning.body_mask import body_mask_from_hu

PathLike = Union[str, Path]
ImagesArg = Union[PathLike, Mapping[str, PathLike]]

LOWER_HU = -1024.0
UPPER_HU = 3071.0
DEFAULT_BIN_WIDTH_HU = 5.0
_SLAB = 32  # z-slices scored at once (bounds the temporary bin-index array)


@dataclass(frozen=True)
class IntensityFloor:
    """Minus log HU density of training body voxels.

    Attributes:
        counts: (n_bins,) int64 body-voxel counts per HU bin; bin i covers
            ``[lower_hu + i * bin_width_hu, lower_hu + (i + 1) * bin_width_hu)``.
        lower_hu: lower edge of the first bin (HU).
        bin_width_hu: bin width (HU).
        smoothing: Laplace pseudo-count added to every bin.
        n_images: number of training images the histogram was learned on.
    """

    counts: np.ndarray
    lower_hu: float = LOWER_HU
    bin_width_hu: float = DEFAULT_BIN_WIDTH_HU
    smoothing: float = 1.0
    n_images: int = 0

    @staticmethod
    def n_bins_for(lower_hu: float, upper_hu: float, bin_width_hu: float) -> int:
        if not (bin_width_hu > 0 and upper_hu > lower_hu):
            raise ScreenerError(f"invalid HU bins: [{lower_hu}, {upper_hu}] with width {bin_width_hu}")
        return int(math.ceil((upper_hu - lower_hu) / bin_width_hu))

    def bin_index(self, image_hu: np.ndarray) -> np.ndarray:
        """Bin of each voxel (same shape, int32), values outside the range clipped into the end bins."""
        index = np.floor((np.asarray(image_hu, np.float32) - self.lower_hu) / self.bin_width_hu)
        return np.clip(index, 0, self.counts.size - 1).astype(np.int32)

    @classmethod
    def fit(cls, train_files: Sequence[PathLike], lower_hu: float = LOWER_HU, upper_hu: float = UPPER_HU,
            bin_width_hu: float = DEFAULT_BIN_WIDTH_HU, smoothing: float = 1.0,
            progress: bool = False) -> "IntensityFloor":
        """Learns the histogram from the body voxels of the training images, one file in memory at a time.

        Args:
            train_files: CT images in HU.
            lower_hu, upper_hu: histogram range (HU); values outside go to the end bins.
            bin_width_hu: bin width (HU).
            smoothing: Laplace pseudo-count per bin (> 0).
            progress: show a progress bar.
        """
        if not train_files:
            raise ScreenerError("the intensity floor needs at least one training image")
        if not smoothing > 0:
            raise ScreenerError(f"smoothing must be > 0, got {smoothing}")
        empty = cls(np.zeros(cls.n_bins_for(lower_hu, upper_hu, bin_width_hu), np.int64), lower_hu, bin_width_hu,
                    smoothing)
        counts = empty.counts.copy()
        for path in tqdm(train_files, desc="intensity floor: histogram", disable=not progress):
            image = read_volume(path)
            image_hu = sitk.GetArrayViewFromImage(image)  # (z, y, x) HU, valid while image lives
            body_hu = image_hu[body_mask_from_hu(image_hu)]  # (n_body,)
            counts += np.bincount(empty.bin_index(body_hu), minlength=counts.size)
        return cls(counts, lower_hu, bin_width_hu, smoothing, n_images=len(train_files))

    def neg_log_density(self) -> np.ndarray:
        """(n_bins,) float64: minus log of the smoothed density per HU of each bin, in nats."""
        probabilities = (self.counts + self.smoothing) / (self.counts.sum() + self.smoothing * self.counts.size)
        return -np.log(probabilities / self.bin_width_hu)

    def score(self, image_hu: np.ndarray, case: str = "") -> np.ndarray:
        """(z, y, x) float32 map of minus log density (nats per HU) of each voxel's HU value.

        Args:
            image_hu: (z, y, x) CT in HU.
            case: unused (the random floor's seed); kept so both floors share one signature.
        """
        table = self.neg_log_density().astype(np.float32)
        out = np.empty(image_hu.shape, np.float32)
        for z0 in range(0, image_hu.shape[0], _SLAB):
            out[z0:z0 + _SLAB] = table[self.bin_index(image_hu[z0:z0 + _SLAB])]
        return out

    def to_dict(self) -> Dict[str, object]:
        return {"kind": "intensity", "lower_hu": self.lower_hu, "bin_width_hu": self.bin_width_hu,
                "smoothing": self.smoothing, "n_images": self.n_images, "counts": self.counts.tolist()}


@dataclass(frozen=True)
class RandomFloor:
    """Uniform noise in [0, 1), seeded by (seed, case name): the same case always gets the same map."""

    seed: int = 0

    def score(self, image_hu: np.ndarray, case: str = "") -> np.ndarray:
        """(z, y, x) float32 noise of the image's shape."""
        rng = np.random.default_rng([int(self.seed), zlib.crc32(case.encode("utf-8"))])
        return rng.random(image_hu.shape, dtype=np.float32)

    def to_dict(self) -> Dict[str, object]:
        return {"kind": "random", "seed": self.seed}


FLOOR_KINDS = ("intensity", "random")


def image_files_by_case(images: ImagesArg) -> Dict[str, Path]:
    """``{case: CT image file}`` from a mapping, or from a folder named as ``nnScreener_predict`` reads it
    (``discover_cases``: ``{case}_0000`` nnU-Net names or plain names), so floor maps and model maps share
    their case names."""
    if isinstance(images, Mapping):
        return {str(case): Path(path) for case, path in images.items()}
    return {case.case_id: Path(case.files[0]) for case in discover_cases(images)}


def training_image_files(train_images: Union[PathLike, Sequence[PathLike]],
                         max_images: Optional[int] = None) -> List[Path]:
    """The training image files of a folder (or a list), evenly thinned to ``max_images`` when given."""
    if isinstance(train_images, (str, Path)):
        folder = Path(train_images)
        if not folder.is_dir():
            raise ScreenerError(f"training image folder {folder} does not exist")
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and strip_ending(p.name) is not None]
    else:
        files = [Path(p) for p in train_images]
    if not files:
        raise ScreenerError(f"no training images in {train_images}")
    if max_images is not None and len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]
    return files


def build_floor(kind: str, train_images: Union[PathLike, Sequence[PathLike], None] = None, seed: int = 0,
                bin_width_hu: float = DEFAULT_BIN_WIDTH_HU, max_train_images: Optional[int] = None,
                progress: bool = False) -> Union[IntensityFloor, RandomFloor]:
    """The floor scorer of a kind in ``FLOOR_KINDS``; the intensity floor is fitted on ``train_images``."""
    if kind == "random":
        return RandomFloor(seed)
    if kind == "intensity":
        if train_images is None:
            raise ScreenerError("the intensity floor needs training images (train_images / -tr)")
        return IntensityFloor.fit(training_image_files(train_images, max_train_images),
                                  bin_width_hu=bin_width_hu, progress=progress)
    raise ScreenerError(f"unknown floor {kind!r}; choose one of {list(FLOOR_KINDS)}")


def write_floor_maps(kind: str, images: ImagesArg, out_dir: PathLike,
                     train_images: Union[PathLike, Sequence[PathLike], None] = None, seed: int = 0,
                     bin_width_hu: float = DEFAULT_BIN_WIDTH_HU, max_train_images: Optional[int] = None,
                     overwrite: bool = False, progress: bool = False) -> Dict[str, Path]:
    """Scores every image with a floor and writes ``out_dir/{case}.nii.gz`` like the predictor (docs/design.md C11).

    Existing outputs are kept unless ``overwrite`` (the intensity floor is then not even fitted when nothing
    is left to do). ``out_dir/floor.json`` records the floor's settings (and the histogram).

    Args:
        kind: ``"intensity"`` or ``"random"``.
        images: folder of CT images (``{case}_0000.nii.gz`` or plain names) or ``{case: file}``.
        out_dir: output folder (created).
        train_images: folder or list of training CT images (intensity floor only), e.g. ``imagesTr``.
        seed: seed of the random floor.
        bin_width_hu: histogram bin width of the intensity floor (HU).
        max_train_images: fit the intensity floor on at most this many training images (evenly spaced).
        overwrite: rewrite existing maps.
        progress: show progress bars.

    Returns:
        ``{case: map file}`` for every input case.
    """
    if kind not in FLOOR_KINDS:
        raise ScreenerError(f"unknown floor {kind!r}; choose one of {list(FLOOR_KINDS)}")
    files = image_files_by_case(images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {case: output_file(out_dir, case) for case in files}
    todo = [case for case in files if overwrite or not outputs[case].is_file()]
    if not todo:
        return outputs
    floor = build_floor(kind, train_images, seed, bin_width_hu, max_train_images, progress)
    (out_dir / "floor.json").write_text(json.dumps(floor.to_dict()) + "\n")
    for case in tqdm(todo, desc=f"{kind} floor", disable=not progress):
        image = read_volume(files[case])
        image_hu = sitk.GetArrayViewFromImage(image)  # (z, y, x) HU
        score_map, _ = fill_outside_body(floor.score(image_hu, case), body_mask_from_hu(image_hu))
        write_map(score_map, {"sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                                             "direction": image.GetDirection()}}, outputs[case])
    return outputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnscreener.evaluation.floors",
        description="Write floor anomaly maps (intensity-only or random) in nnScreener_predict's output format.")
    parser.add_argument("kind", choices=FLOOR_KINDS, help="which floor")
    parser.add_argument("-i", dest="images", type=Path, required=True,
                        help="folder of CT images ({case}_0000.nii.gz or plain names)")
    parser.add_argument("-o", dest="out_dir", type=Path, required=True, help="output folder of the maps")
    parser.add_argument("-tr", dest="train_images", type=Path, default=None,
                        help="folder of training CT images (intensity floor), e.g. DatasetXXX/imagesTr")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random floor")
    parser.add_argument("--bin_width_hu", type=float, default=DEFAULT_BIN_WIDTH_HU,
                        help="histogram bin width in HU (intensity floor)")
    parser.add_argument("--max_train_images", type=int, default=None,
                        help="fit the intensity floor on at most this many training images")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing maps")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        outputs = write_floor_maps(args.kind, args.images, args.out_dir, train_images=args.train_images,
                                   seed=args.seed, bin_width_hu=args.bin_width_hu,
                                   max_train_images=args.max_train_images, overwrite=args.overwrite, progress=True)
    except ScreenerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(outputs)} {args.kind} floor maps in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz test of the image readers: seeded byte flips and truncations of small NIfTI (.nii, .nii.gz), NRRD and MHA
files, each read with :func:`nnscreener.io.images.read_image` and with the planning / prediction reader
:func:`nnscreener.planning.preprocessor.read_ct_image`. Every outcome must be an image or a ScreenerError: never
another exception, a crash or a hang.

The files are read in one child process (memory-capped, so a flipped size field cannot exhaust the machine) that
reports one line per file; the parent gives each file :data:`CASE_TIMEOUT_S` seconds.
"""
from __future__ import annotations

import gzip
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
ENDINGS = (".nii", ".nii.gz", ".nrrd", ".mha")
N_CASES = 60  # mutated files, spread over the endings
CASE_TIMEOUT_S = 10.0  # per file, including the child's start for the first one
CHILD_MEMORY_BYTES = 4 * 2 ** 30


def _original(folder: Path, ending: str) -> bytes:
    hu = np.full((6, 7, 8), -1000, np.int16)
    hu[1:5, 2:6, 2:7] = 40
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.5, 1.5, 2.5))
    path = folder / f"original{ending}"
    sitk.WriteImage(image, str(path), useCompression=ending != ".nii")
    return path.read_bytes()


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """A truncation, or 1..8 random bytes replaced (in the compressed bytes of a .gz file, or in its content)."""
    kind = rng.integers(3)
    if kind == 0:
        return data[: int(rng.integers(0, len(data)))]
    if kind == 1 and data[:2] == b"\x1f\x8b":  # flips inside the NIfTI content, recompressed
        return gzip.compress(_mutate(gzip.decompress(data), rng), mtime=0)
    mutated = bytearray(data)
    for position in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
        mutated[position] = int(rng.integers(256))
    return bytes(mutated)


def make_cases(folder: Path, n_cases: int = N_CASES, seed: int = 0) -> List[Path]:
    """Writes ``n_cases`` mutated files (seeded) and returns their paths."""
    rng = np.random.default_rng(seed)
    originals = {ending: _original(folder, ending) for ending in ENDINGS}
    paths = []
    for i in range(n_cases):
        ending = ENDINGS[i % len(ENDINGS)]
        path = folder / f"case{i:03d}{ending}"
        path.write_bytes(_mutate(originals[ending], rng))
        paths.append(path)
    return paths


def read_each(listing: str) -> None:
    """Child side: reads every file listed (one per line) with both readers; prints one JSON line per file."""
    import resource

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnscreener.errors import ScreenerError
    from nnscreener.io.images import read_image
    from nnscreener.planning.preprocessor import read_ct_image

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    for path in Path(listing).read_text().splitlines():
        outcome = []
        for read in (lambda: read_image(Path(path)), lambda: read_ct_image([path], SimpleITKIO())):
            try:
                read()
                outcome.append("image")
            except ScreenerError:
                outcome.append("ScreenerError")
            except BaseException as e:  # the failure this test looks for
                outcome.append(f"{type(e).__name__}: {e}"[:300])
        print(json.dumps({"path": path, "outcome": outcome}), flush=True)


def test_every_mutated_file_gives_an_image_or_a_screener_error(tmp_path):
    paths = make_cases(tmp_path)
    listing = tmp_path / "listing.txt"
    listing.write_text("\n".join(map(str, paths)))
    code = f"from tests.io.test_reader_fuzz import read_each; read_each({str(listing)!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    outcomes = {}
    try:
        for path in paths:
            deadline = time.monotonic() + CASE_TIMEOUT_S
            while not select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"reading {path} hung for more than {CASE_TIMEOUT_S:g} s")
            line = child.stdout.readline()
            assert line, f"the reader process died reading {path} (exit code {child.wait()})"
            report = json.loads(line)
            outcomes[report["path"]] = report["outcome"]
    finally:
        child.kill()
        child.wait()
    bad = {p: o for p, o in outcomes.items() if any(x not in ("image", "ScreenerError") for x in o)}
    assert bad == {}
    assert len(outcomes) == N_CASES
    assert any("ScreenerError" in o for o in outcomes.values())  # the mutations do break files

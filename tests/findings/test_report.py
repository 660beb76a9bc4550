"""Report PNGs (with and without findings) and the folder's index."""
import json

import numpy as np
import SimpleITK as sitk
from matplotlib.image import imread

from nnscreener.findings.outputs import findings_files
from nnscreener.findings.report import (INDEX_FILE, draw_report, report_file, report_range, write_case_report,
                                         write_index)
from nnscreener.inference.input_files import output_file
from tests.inference.test_previews import stored


def _document(rows, threshold=2.0):
    return {"case": "c<1>", "operating_point": "fp_ml=10", "threshold": threshold, "n_findings": len(rows),
            "normal_fpr_at_threshold": 1e-3, "normal_fp_ml_per_scan_at_threshold": 10.0, "findings": rows}


def _row(i, centre_xyz, max_score):
    return {"id": i, "volume_ml": 1.5, "max_score": max_score, "max_score_percentile_normal": 99.9,
            "centroid_lps_mm": [1.0, 2.0, 3.0], "centroid_voxel_xyz": centre_xyz, "organ": "liver"}


def test_reports_are_drawn_with_and_without_findings(tmp_path):
    image = np.full((10, 20, 16), -1000.0, np.float32)
    image[:, 4:16, 3:13] = 40.0
    score = np.zeros(image.shape, np.float32)
    score[:, 4:16, 3:13] = np.random.default_rng(0).random((10, 12, 10))
    score[5, 9, 7] = 5.0
    mask = (score > 2.0).astype(np.uint8)
    with_findings = draw_report(image, score, mask, (1.0, 1.0, 2.0), _document([_row(1, [7, 9, 5], 5.0)]),
                                tmp_path / "a.png")
    without = draw_report(image, score, np.zeros_like(mask), (1.0, 1.0, 2.0), _document([]), tmp_path / "b.png")
    for path in (with_findings, without):
        pixels = imread(path)
        assert pixels.shape[0] > 100 and pixels.std() > 0
    assert report_range(score, _document([_row(1, [7, 9, 5], 5.0)])) == (
        min(float(np.percentile(score[score > 0], 97)), 2.0), 5.0)


def test_the_index_lists_every_case_with_links_and_escapes_names(tmp_path):
    (tmp_path / "c<1>_findings.json").write_text(json.dumps(_document([_row(1, [1, 1, 1], 3.0)])))
    (tmp_path / "c<1>_findings.png").write_bytes(b"")
    text = write_index(tmp_path).read_text()
    assert (tmp_path / INDEX_FILE).is_file()
    assert "<h2>c&lt;1&gt;</h2><p>1 finding at fp_ml=10" in text and '<img src="c%3C1%3E_findings.png"' in text
    assert 'href="c%3C1%3E_findings.csv"' in text


def _case_folder(folder, flipped: bool):
    """A case's scan, map, findings mask and findings JSON (one finding) as the findings step writes them."""
    rng = np.random.default_rng(0)
    scan = np.full((12, 20, 16), -1000.0, np.float32)
    scan[:, 4:16, 3:13] = 40.0
    scan[2:5, 6:9, 4:7] = 300.0  # asymmetric anatomy: a flip would show
    score = np.zeros(scan.shape, np.float32)
    score[:, 4:16, 3:13] = rng.random((12, 12, 10))
    score[8, 12, 10] = 6.0
    mask = (score > 2.0).astype(np.uint8)
    folder.mkdir()
    for array, path in ((scan, folder / "scan.nii.gz"), (score, output_file(folder, "c")),
                        (mask, findings_files(folder, "c")["mask"])):
        sitk.WriteImage(stored(array, flipped), str(path))
    centre_xyz = [16 - 1 - 10, 12, 12 - 1 - 8] if flipped else [10, 12, 8]
    row = {**_row(1, centre_xyz, 6.0), "centroid_lps_mm": [0.0, 38.0, 46.0]}
    document = {**_document([row]), "case": "c"}
    findings_files(folder, "c")["json"].write_text(json.dumps(document))
    return folder / "scan.nii.gz"


def test_a_report_looks_the_same_whatever_direction_the_scan_is_stored_in(tmp_path):
    """A scan stored with z and x reversed is drawn exactly like the same scan stored with identity direction, the
    finding's slices included (before the display orientation, its coronal slice came out upside down)."""
    pixels = {}
    for flipped in (False, True):
        folder = tmp_path / f"flipped{flipped}"
        write_case_report(folder, "c", _case_folder(folder, flipped))
        pixels[flipped] = imread(report_file(folder, "c"))
    assert pixels[False].shape == pixels[True].shape
    np.testing.assert_array_equal(pixels[False], pixels[True])


"""The DICOM CT series reader: series checks and decoding errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from nnscreener.errors import ScreenerError
from nnscreener.io import dicom
from tests.io.dicom_files import stored_pixels, write_dicom_series


def _slice(k: int, position, **changes) -> dicom.DicomSlice:
    fields = dict(path=Path(f"/s/{k}.dcm"), series_uid="1.2", sop_uid=f"9.{k}", study_uid="1", patient_id="p",
                  modality="CT", image_type=("ORIGINAL",), position=None if position is None else tuple(position),
                  orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.7, 0.8), rows=16, columns=16, frames=1,
                  series_description="", series_number=1)
    fields.update(changes)
    return dicom.DicomSlice(**fields)


def test_check_ct_series_sorts_by_position_and_rejects_broken_stacks():
    slices = [_slice(k, (0, 0, z)) for k, z in enumerate([5.0, -5.0, 0.0, 10.0])]
    series = dicom.check_ct_series(slices)
    assert [s.position[2] for s in series.slices] == [-5.0, 0.0, 5.0, 10.0]
    assert series.slice_spacing == pytest.approx(5.0)
    cases = {
        "same position": [_slice(k, (0, 0, z)) for k, z in enumerate([0.0, 5.0, 5.0, 10.0])],
        "inconsistent slice spacing": [_slice(k, (0, 0, z)) for k, z in enumerate([0.0, 5.0, 15.0, 20.0])],
        "gantry tilt": [_slice(k, (0, 0.5 * k, 5.0 * k)) for k in range(4)],
        "ImageOrientationPatient": [_slice(k, (0, 0, 5.0 * k), orientation=(1, 0, 0, 0, 0.9, 0.1) if k == 2
                                           else (1, 0, 0, 0, 1, 0)) for k in range(4)],
        "not CT": [_slice(k, (0, 0, 5.0 * k), modality="MR") for k in range(4)],
        "localizer": [_slice(k, (0, 0, 5.0 * k), image_type=("ORIGINAL", "LOCALIZER")) for k in range(4)],
        "needs at least": [_slice(k, (0, 0, 5.0 * k)) for k in range(2)],
        "lacks position": [_slice(k, (0, 0, 5.0 * k)) for k in range(3)] + [_slice(3, None)],
    }
    for message, broken in cases.items():
        with pytest.raises(ScreenerError, match=message):
            dicom.check_ct_series(broken)
    with pytest.raises(ScreenerError, match="unreadable file"):
        dicom.check_ct_series(slices, unreadable=[(Path("/s/x.dcm"), "unreadable DICOM file /s/x.dcm")])


def test_truncated_dicom_pixels_are_reported_by_the_series_reader(tmp_path: Path):
    folder = tmp_path / "series"
    write_dicom_series(folder, stored_pixels(4, 10), [0, 2, 4, 6])
    victim = sorted(folder.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-200])  # header intact, pixel data cut short
    scan = dicom.scan_dicom_folder(folder)
    series = dicom.check_ct_series(scan.series()[scan.slices[0].series_uid], scan.unreadable)
    with pytest.raises(ScreenerError, match="cannot be read"):
        dicom.read_dicom_series(series)

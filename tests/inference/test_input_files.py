from pathlib import Path

import pytest

from nnscreener.errors import ScreenerError
from nnscreener.inference.input_files import (InputCase, discover_cases, image_ending, output_file, select_part,
                                              split_finished)


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


def test_nnunet_names_are_grouped_by_case_with_channel_zero_first(tmp_path):
    _touch(tmp_path, "liver_002_0000.nii.gz", "liver_001_0001.nii.gz", "liver_001_0000.nii.gz", "dataset.json",
           ".hidden_0000.nii.gz")
    (tmp_path / "sub_0000.nii.gz").mkdir()  # folders are not images
    cases = discover_cases(tmp_path)
    assert cases == [
        InputCase("liver_001", (str(tmp_path / "liver_001_0000.nii.gz"), str(tmp_path / "liver_001_0001.nii.gz"))),
        InputCase("liver_002", (str(tmp_path / "liver_002_0000.nii.gz"),)),
    ]


def test_plain_files_of_every_supported_type_are_single_channel_cases(tmp_path):
    _touch(tmp_path, "b.nii", "a.NII.GZ", "c.nrrd", "d.mha", "e.txt", "f.png")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b", "c", "d"]
    assert all(len(c.files) == 1 for c in cases)
    case_id, files = cases[2]  # unpacks as (case_id, [files])
    assert case_id == "c" and files == (str(tmp_path / "c.nrrd"),)


def test_a_single_image_file_is_one_case(tmp_path):
    _touch(tmp_path, "scan_0000.nii.gz")
    assert discover_cases(tmp_path / "scan_0000.nii.gz") == [InputCase("scan", (str(tmp_path / "scan_0000.nii.gz"),))]
    _touch(tmp_path, "notes.txt")
    with pytest.raises(ScreenerError, match="notes.txt"):
        discover_cases(tmp_path / "notes.txt")


def test_discovery_errors_name_the_folder_or_the_clashing_files(tmp_path):
    with pytest.raises(ScreenerError, match="missing.*does not exist"):
        discover_cases(tmp_path / "missing")
    _touch(tmp_path, "readme.md")
    with pytest.raises(ScreenerError, match="holds no images"):
        discover_cases(tmp_path)
    _touch(tmp_path, "x.nii", "x.nii.gz")
    with pytest.raises(ScreenerError, match=r"x\.nii.*x\.nii\.gz.*case 'x'"):
        discover_cases(tmp_path)


def test_image_ending():
    assert image_ending("a_0000.nii.gz") == ".nii.gz"
    assert image_ending("a.nii") == ".nii"
    assert image_ending("a.MHA") == ".mha"
    assert image_ending("a.nii.gz.bak") is None


@pytest.mark.parametrize("num_parts", [1, 2, 3, 7])
def test_parts_are_disjoint_and_cover_all_cases(num_parts):
    cases = [InputCase(f"c{i}", (f"c{i}.nii",)) for i in range(10)]
    parts = [select_part(cases, num_parts, i) for i in range(num_parts)]
    flat = [c for part in parts for c in part]
    assert sorted(flat) == sorted(cases) and len(flat) == len(cases)
    assert select_part(cases, num_parts, 0)[0] == cases[0]
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_bad_part_arguments_are_rejected():
    with pytest.raises(ScreenerError, match="-num_parts"):
        select_part([], 0, 0)
    with pytest.raises(ScreenerError, match=r"-part_id must lie in 0..1"):
        select_part([], 2, 2)
    with pytest.raises(ScreenerError, match="-part_id"):
        select_part([], 2, -1)


def test_finished_cases_are_skipped_unless_overwrite(tmp_path):
    cases = [InputCase("a", ("a.nii",)), InputCase("b", ("b.nii",))]
    assert output_file(tmp_path, "b") == tmp_path / "b.nii.gz"
    output_file(tmp_path, "b").write_bytes(b"done")
    (tmp_path / ".partial_a.nii.gz").write_bytes(b"interrupted")  # a partial write is not a finished output
    assert split_finished(cases, tmp_path, overwrite=False) == ([cases[0]], [cases[1]])
    assert split_finished(cases, tmp_path, overwrite=True) == (cases, [])

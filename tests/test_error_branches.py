"""Every one-line refusal of ``boxes_json``, ``cli``, ``volume_io`` and ``dataset`` that no other test reaches,
through the command as a user runs it: exit 2, one ``samprostate: error:`` line naming the cause, no traceback,
nothing written or changed. Each case makes its bad input from the fixtures; none loads a model.

Refusals tested elsewhere: schema and finite numbers of a boxes file, truncated, corrupt, 2D, 4D, constant,
beyond-float32 and non-orthogonal volumes, a label suffix, the output paths, --epochs/--learning-rate/--batch-size,
a missing mask in cases.csv, a batch's failed volumes (test_refusals.py, test_cli.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIXTURES
from test_refusals import assert_refused, no_model_loads, run, snapshot  # noqa: F401 (a fixture)

CASE = FIXTURES / "P158-020.nii.gz"  # 270 x 270 x 4
CASE_MASK = FIXTURES / "P158-020_seg.nii.gz"


def _boxes(folder: Path, *entries: dict, version: int = 2, size=(270, 270, 4)) -> Path:
    path = folder / "boxes.json"
    path.write_text(json.dumps({"format": "samprostate-boxes", "version": version, "image": {"size": list(size)}, "boxes": list(entries)}))
    return path


def _volume(folder: Path, array: np.ndarray, name: str = "v.mha", vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(folder / name))
    return folder / name


def _dicom_series(folder: Path, uids: tuple[str, ...]) -> Path:
    """Two-slice DICOM series, one per series instance UID, in one folder."""
    folder.mkdir()
    for number, uid in enumerate(uids):
        for index in range(2):
            plane = sitk.GetImageFromArray(np.full((1, 32, 32), index + 1, np.int16))[:, :, 0]
            for tag, value in {"0020|000e": uid, "0020|0013": str(index + 1), "0020|0032": f"0\\0\\{index}", "0008|0060": "MR"}.items():
                plane.SetMetaData(tag, value)
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(folder / f"s{number}-{index}.dcm"))
            writer.Execute(plane)
    return folder


def _cases_csv(folder: Path, header: str, row: str) -> Path:
    (folder / "cases.csv").write_text(f"{header}\n{row}\n")
    return folder


def _segment(folder: Path, *extra) -> list:
    return ["segment", CASE, "-o", folder / "out.nii.gz", *extra]


SEGMENT_POINT = {"slice": 1, "pixel": [100, 100, 160, 150], "points": [[130, 125, 1]]}

# (what the user gets wrong, the command made in a fresh folder, a part of the one line)
BRANCHES: list[tuple[str, Callable[[Path], list], str]] = [
    # io/boxes_json.py
    ("boxes file missing", lambda f: _segment(f, "--boxes-in", f / "gone.json"), "boxes file not found"),
    ("boxes file a folder", lambda f: (f / "b.json").mkdir() or _segment(f, "--boxes-in", f / "b.json"), "is a folder"),
    ("boxes file not JSON", lambda f: (f / "b.json").write_text("{not json") and _segment(f, "--boxes-in", f / "b.json"), "cannot read boxes file"),
    ("boxes file not UTF-8", lambda f: (f / "b.json").write_bytes(b"\xff\xfe\x00") and _segment(f, "--boxes-in", f / "b.json"), "cannot read boxes file"),
    ("boxes for another size", lambda f: _segment(f, "--boxes-in", _boxes(f, size=(320, 320, 4))), "made for a volume of size [320, 320, 4]"),
    ("corners off their slice", lambda f: _segment(f, "--boxes-in", _boxes(f, {"slice": 3, "lps": _corners_on_slice(1)})), "$.boxes[0]: slice 3 does not match"),
    ("points on a version 1 file", lambda f: _segment(f, "--boxes-in", _boxes(f, SEGMENT_POINT, version=1)), 'points need "version": 2'),
    ("slice outside the volume", lambda f: _segment(f, "--boxes-in", _boxes(f, {"slice": 4, "pixel": [1, 1, 9, 9]})), "slice 4 is outside the volume (0..3)"),
    ("point outside the slice", lambda f: _segment(f, "--boxes-in", _boxes(f, {"slice": 1, "points": [[300, 10, 1]]})), "the point (300, 10) on slice 1 lies outside"),
    ("inverted box", lambda f: _segment(f, "--boxes-in", _boxes(f, {"slice": 1, "pixel": [160, 100, 100, 150]})), "is inverted"),
    ("box outside the slice", lambda f: _segment(f, "--boxes-in", _boxes(f, {"slice": 1, "pixel": [280, 280, 300, 300]})), "lies outside the 270x270 slice"),
    # apps/cli.py
    ("negative margin", lambda f: _segment(f, "--margin-mm", "-1"), "--margin-mm must be a number of millimetres"),
    ("NaN margin", lambda f: _segment(f, "--margin-mm", "nan"), "--margin-mm must be a number of millimetres"),
    ("negative z smoothing", lambda f: _segment(f, "--z-smoothing-mm", "-2"), "--z-smoothing-mm must be a number of millimetres"),
    ("no grid points", lambda f: _segment(f, "--grid-points", "0"), "--grid-points must be at least 1"),
    ("merge with a self-prompting method", lambda f: _segment(f, "--method", "samed", "--merge-slices"), "--method samed prompts itself; --merge-slices"),
    ("own SAM with a trained method", lambda f: _segment(f, "--method", "samed", "--sam-checkpoint", CASE), "samed model belongs to LiteMedSAM"),
    ("SAM checkpoint missing", lambda f: _segment(f, "--sam-checkpoint", f / "sam.pth"), "sam.pth not found"),
    ("coarse checkpoint a folder", lambda f: _segment(f, "--coarse-checkpoint", f), "is not a file"),
    ("boxes for a self-prompting method", lambda f: _segment(f, "--method", "desam-grid", "--boxes-in", _boxes(f)), "--method desam-grid prompts itself; --boxes-in"),
    ("points for a box-trained decoder", lambda f: _segment(f, "--boxes-in", _boxes(f, SEGMENT_POINT)), "points on slice(s) 1, but the zero-shot decoder was trained with boxes only"),
    ("points with --merge-slices", lambda f: _segment(f, "--boxes-in", _boxes(f, SEGMENT_POINT), "--merge-slices"), "--merge-slices takes boxes only"),
    ("batch with --boxes-out", lambda f: ["segment", CASE, FIXTURES / "Case29.nii.gz", "-o", f / "o", "--boxes-out", f / "b.json"], "take one volume, not a batch"),
    ("batch with --psa", lambda f: ["segment", CASE, FIXTURES / "Case29.nii.gz", "-o", f / "o", "--psa", "5"], "take one volume, not a batch"),
    ("batch into a file", lambda f: (f / "o").write_text("mine") and ["segment", CASE, FIXTURES / "Case29.nii.gz", "-o", f / "o"], "is a file; for a batch, -o is a folder"),
    ("batch of two same names", lambda f: (f / "P158-020.nii.gz").write_bytes(CASE.read_bytes()) and ["segment", CASE, f / "P158-020.nii.gz", "-o", f / "o"],
     f"{CASE} and "),
    ("batch of names one in another case", lambda f: (f / "p158-020.NII.GZ").write_bytes(CASE.read_bytes()) and ["segment", CASE, f / "p158-020.NII.GZ", "-o", f / "o"],
     "would both be written as"),  # one file on macOS and Windows
    ("batch into a label file name", lambda f: ["segment", CASE, FIXTURES / "Case29.nii.gz", "-o", f / "labels.nii.gz"],
     "names a file, but 2 volumes are given: for a batch, -o is the folder"),
    ("DICOM folder with a NIfTI beside", lambda f: (_dicom_series(f / "study", ("1.2.3.1",)) / "t2.nii.gz").write_bytes(CASE.read_bytes())
     and ["segment", f / "study", "-o", f / "out.nii.gz"], "holds a DICOM series and volume files (t2.nii.gz)"),
    ("labels into the DICOM folder", lambda f: ["segment", _dicom_series(f / "study", ("1.2.3.1",)), "-o", f / "study" / "labels.nii.gz"],
     "is inside the input folder"),
    ("--sam-type without checkpoint", lambda f: _segment(f, "--sam-type", "vit_h"), "--sam-type vit_h describes --sam-checkpoint"),
    ("evaluate no cases", lambda f: ["evaluate", "--data", FIXTURES, "--cases", "0"], "--cases must be at least 1"),
    ("train-coarse into a file", lambda f: (f / "runs").write_text("mine") and ["train-coarse", "--data", FIXTURES, "--site", "fixture", "--output", f / "runs"],
     "is a file; training writes into a folder"),
    ("train into a file", lambda f: (f / "runs").write_text("mine") and ["train", "--data", FIXTURES, "--site", "fixture", "--output", f / "runs"],
     "is a file; training writes into a folder"),
    ("train-coarse on no cases", lambda f: ["train-coarse", "--data", FIXTURES, "--site", "fixture", "--max-cases", "0", "--output", f / "r"], "--max-cases must be positive, not 0"),
    ("negative z context", lambda f: ["train-coarse", "--data", FIXTURES, "--site", "fixture", "--context-mm", "-4", "--output", f / "r"], "--context-mm must be a number of millimetres"),
    ("embed on no cases", lambda f: ["embed", "--data", FIXTURES, "--site", "fixture", "--max-cases", "-2", "--cache", f / "c"], "--max-cases must be positive, not -2"),
    ("negative augmented copies", lambda f: ["train", "--data", FIXTURES, "--site", "fixture", "--augmented-copies", "-1", "--cache", f / "c"],
     "--augmented-copies must be 0 or more, not -1"),
    ("bench report not Markdown", lambda f: ["bench", "--data", FIXTURES, "--output", f / "bench.txt"], "--output is the Markdown report"),
    ("bench no cases", lambda f: ["bench", "--data", FIXTURES, "--cases", "0"], "--cases must be at least 1"),
    ("bench no rounds", lambda f: ["bench", "--data", FIXTURES, "--rounds", "0"], "--rounds must be at least 1"),
    ("bench review too long", lambda f: ["bench", "--data", FIXTURES, "--review-seconds", "-1"], "--review-seconds must be between 0 and 600"),
    # io/volume_io.py
    ("volume not an image", lambda f: (f / "v.nii.gz").write_bytes(b"not an image") and ["segment", f / "v.nii.gz", "-o", f / "out.nii.gz"], "cannot read"),
    ("folder without DICOM", lambda f: (f / "empty").mkdir() or ["segment", f / "empty", "-o", f / "out.nii.gz"], "no DICOM image series"),
    ("colour volume", lambda f: ["segment", _volume(f, np.ones((4, 32, 32, 3), np.uint8), vector=True), "-o", f / "out.nii.gz"], "3 components per pixel"),
    ("single slice", lambda f: ["segment", _volume(f, np.arange(32 * 32, dtype=np.float32).reshape(1, 32, 32)), "-o", f / "out.nii.gz"], "has a single slice"),
    ("tiny slices", lambda f: ["segment", _volume(f, np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)), "-o", f / "out.nii.gz"], "slices are 8x8 pixels"),
    ("NaN voxels", lambda f: ["segment", _volume(f, np.where(np.eye(32)[None] > 0, np.nan, 1.0).repeat(4, 0).astype(np.float32)), "-o", f / "out.nii.gz"],
     "contains NaN or infinite values"),
    # io/dataset.py
    ("data folder missing", lambda f: ["evaluate", "--data", f / "gone"], "data folder not found"),
    ("no cases in the folder", lambda f: (f / "d").mkdir() or ["evaluate", "--data", f / "d"], "no cases in"),
    ("no cases of the site", lambda f: ["evaluate", "--data", FIXTURES, "--site", "RUNMC"], "with site RUNMC"),
    ("image missing in cases.csv", lambda f: ["evaluate", "--data", _cases_csv(f, "case,image,mask", f"x,{f / 'gone.nii.gz'},{CASE}")], "case x: image"),
    ("cases.csv without columns", lambda f: ["evaluate", "--data", _cases_csv(f, "name,file", f"x,{CASE}")], "lacks the column(s) case, image, mask"),
    ("train-coarse initial weights missing", lambda f: ["train-coarse", "--data", FIXTURES, "--site", "fixture", "--output", f / "runs",
                                                        "--initial-weights", f / "gone.pt"], "gone.pt not found"),
    ("training site with a test split", lambda f: ["train-coarse", "--data", _cases_csv(f, "case,site,split,image,mask", f"a,S,train,{CASE},{CASE_MASK}\nb,S,test,{CASE},{CASE_MASK}"),
                                                    "--site", "S", "--output", f / "runs"], "site S has cases in the splits test, train: training takes every case"),
    ("cases.csv row cut short", lambda f: ["evaluate", "--data", _cases_csv(f, "case,site,image,mask", "x,RUNMC")], "line 2 has fewer values than the header"),
    ("cases.csv row without mask", lambda f: ["evaluate", "--data", _cases_csv(f, "case,image,mask", f"x,{CASE},")], "line 2 has no mask"),
    ("SAMed on whole-gland masks", lambda f: ["train", "--method", "samed", "--data", _whole_gland_site(f), "--site", "S", "--cache", f / "c"],
     "case a: its mask holds the labels 0, 1; --method samed learns the transition (1) and peripheral (2) zones"),
]


def _whole_gland_site(folder: Path) -> Path:
    """Two cases whose masks mark the whole gland 1 (the usual format of a new site), with a spreadsheet's byte-order mark."""
    mask = sitk.ReadImage(str(FIXTURES / "Case29_seg.nii.gz")) > 0
    sitk.WriteImage(sitk.Cast(mask, sitk.sitkUInt8), str(folder / "gland.nii.gz"))
    (folder / "cases.csv").write_text(f"\ufeffcase,site,image,mask\na,S,{FIXTURES / 'Case29.nii.gz'},gland.nii.gz\n"
                                      f"b,S,{FIXTURES / 'Case29.nii.gz'},gland.nii.gz\n", encoding="utf-8")
    return folder


def _corners_on_slice(index: int) -> list[list[float]]:
    image = sitk.ReadImage(str(CASE))
    return [list(image.TransformContinuousIndexToPhysicalPoint((x, y, index))) for x, y in ((100, 100), (160, 150))]


@pytest.mark.parametrize("make, message", [(make, message) for _, make, message in BRANCHES], ids=[name for name, _, _ in BRANCHES])
def test_a_user_mistake_is_one_line_and_exit_2(capsys, tmp_path, no_model_loads, make, message):  # noqa: F811
    arguments = make(tmp_path)
    assert_refused(capsys, tmp_path, arguments, message)


def test_folders_in_a_batch_that_hold_no_or_two_dicom_series_are_named_one_line_each(capsys, tmp_path, no_model_loads):  # noqa: F811
    """A folder in a batch is read as one DICOM series: none, or two, is refused on its own line, then the batch's summary."""
    (tmp_path / "empty").mkdir()
    two = _dicom_series(tmp_path / "two", ("1.2.3.1", "1.2.3.2"))
    before = snapshot(tmp_path)
    assert run("segment", tmp_path / "empty", two, "-o", tmp_path / "labels") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[:2] for line in lines] == [["samprostate", "error"]] * 3, lines
    assert "no DICOM series in folder" in lines[0] and f"2 DICOM series in {two}" in lines[1] and "2 of 2 volumes failed: empty, two" in lines[2]
    assert snapshot(tmp_path) == before


def test_a_mask_of_another_size_than_its_image_is_one_line(capsys, tmp_path, no_model_loads):  # noqa: F811
    """Found from the files' headers when the cases are listed, before any model loads: one error line naming the case
    and both sizes, exit 2, no traceback, nothing written."""
    data = _cases_csv(tmp_path, "case,image,mask", f"x,{CASE},{FIXTURES / 'Case29_seg.nii.gz'}")
    before = snapshot(tmp_path)
    assert run("evaluate", "--data", data, "--method", "zero-shot", "--device", "cpu") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"samprostate: error: case x: mask {FIXTURES / 'Case29_seg.nii.gz'} is (384, 384, 4), image is (270, 270, 4)"], lines
    assert snapshot(tmp_path) == before


def test_a_mask_on_another_grid_than_its_image_is_one_line(capsys, tmp_path, no_model_loads):  # noqa: F811
    """The same size but shifted by half a voxel: the labels would be off, so the case is refused like a wrong size."""
    mask = sitk.ReadImage(str(FIXTURES / "P158-020_seg.nii.gz"))
    mask.SetOrigin(tuple(value + 0.2 for value in mask.GetOrigin()))
    sitk.WriteImage(mask, str(tmp_path / "shifted_seg.nii.gz"))
    data = _cases_csv(tmp_path, "case,image,mask", f"x,{CASE},{tmp_path / 'shifted_seg.nii.gz'}")
    assert_refused(capsys, tmp_path, ["evaluate", "--data", data, "--method", "zero-shot", "--device", "cpu"],
                   f"case x: mask {tmp_path / 'shifted_seg.nii.gz'} has origin")


def test_a_folder_batch_takes_its_volumes_whatever_their_suffix_case_and_skips_hidden_files(tmp_path):
    """macOS leaves ``._NAME`` files on shared drives and a killed run leaves ``.NAME.partial-PID`` files: neither is a volume."""
    from SAMProstateSDGLib.apps.cli import _batch_inputs

    for name in ("._a.nii.gz", ".a.partial-7.nii.gz", "B.NII.GZ", "B_seg.NII.GZ", "c.nrrd", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert _batch_inputs([tmp_path]) == [tmp_path / "B.NII.GZ", tmp_path / "c.nrrd"]

"""The robustness suite end to end on a real 4-slice fixture: shifted cases, scores, confidence records, JSON."""

import json
import math

import pytest
import SimpleITK as sitk

from conftest import FIXTURES, samprostate
from SAMProstateSDGLib.apps.acquisition_shifts import SHIFTS
from SAMProstateSDGLib.apps.evaluation import from_json, to_json
from SAMProstateSDGLib.apps.robustness import CLEAN, markdown_table, run_suite
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.core.files import json_text
from SAMProstateSDGLib.io.dataset import Case
from SAMProstateSDGLib.masks.metrics import Score
from SAMProstateSDGLib.methods.registry import DEFAULT_METHOD, method


def test_the_suite_scores_each_shift_and_records_each_slice_confidence(segmenter):
    case = Case("Case29", "ISBI-extra", "source-extra", FIXTURES / "Case29.nii.gz", FIXTURES / "Case29_seg.nii.gz")
    shifts = tuple(shift for shift in SHIFTS if shift.name == "flipped rows and slices")
    result = run_suite(method(DEFAULT_METHOD).load(segmenter), [case], seed=0, shifts=shifts)
    method_row = result.method_row
    assert set(result.scores[method_row]) == {CLEAN, shifts[0].name}
    # the coarse network reads the flipped file in the training orientation: the boxes still land on the gland
    assert result.scores[method_row][shifts[0].name]["Case29"].dice > 0.85
    records = [record for record in result.slices if record.row == method_row]
    assert {record.shift for record in records} == {CLEAN, shifts[0].name}
    assert all(record.predicted_iou is not None for record in records)  # every gland slice of the crop got a box
    data = json.loads(json.dumps(result.to_json()))
    assert data["flags"][method_row]["slices"] == len(records)
    assert data["shifts"] == {shifts[0].name: shifts[0].description}
    table = markdown_table(result)
    assert table.count("\n| ") >= 2 and "Confidence flags" in table


def test_the_suite_refuses_to_overwrite_its_json(tmp_path):
    (tmp_path / "table.json").write_text("{}")
    result = samprostate("evaluate", "--data", FIXTURES, "--shifts", "--output", tmp_path / "table.md", check=False)
    assert result.returncode == 2 and "table.json exists" in result.stderr
    assert not (tmp_path / "table.md").exists() and (tmp_path / "table.json").read_text() == "{}"


def test_a_case_without_gland_or_a_negative_seed_is_refused_before_any_work(tmp_path):
    """The coil and z-coverage shifts are placed by the gland (an empty mask failed mid-suite with a traceback), and
    numpy's generators take no negative seed (it failed after the first case)."""
    mask = sitk.ReadImage(str(FIXTURES / "Case29_seg.nii.gz")) * 0
    sitk.WriteImage(mask, str(tmp_path / "Case29_seg.nii.gz"))
    case = Case("Case29", "ISBI-extra", "source-extra", FIXTURES / "Case29.nii.gz", tmp_path / "Case29_seg.nii.gz")
    with pytest.raises(InputError, match="needs gland in every reference mask; empty in Case29"):
        run_suite(None, [case])  # refused before the method is even looked at
    result = samprostate("evaluate", "--data", FIXTURES, "--shifts", "--seed", "-1", check=False)
    assert result.returncode == 2 and "argument --seed: must be 0 or more, not -1" in result.stderr


def test_a_score_that_does_not_exist_is_written_as_null_and_read_back_as_nan():
    """The HD95 of an empty prediction is NaN, which strict JSON refused: ``--output`` lost a whole evaluation."""
    scores = {"row": {"A": Score(0.0, math.nan), "B": Score(0.9, 3.0)}}
    text = json_text(to_json(scores))
    assert json.loads(text)["scores"]["row"]["A"]["hd95_mm"] is None
    restored = from_json(json.loads(text))
    assert math.isnan(restored["row"]["A"].hd95_mm) and restored["row"]["B"] == Score(0.9, 3.0)

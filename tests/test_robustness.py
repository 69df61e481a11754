"""The robustness suite end to end on a real 4-slice fixture: shifted cases, scores, confidence records, JSON."""

import json

from conftest import FIXTURES
from SAMProstateSDGLib.apps.acquisition_shifts import SHIFTS
from SAMProstateSDGLib.apps.robustness import CLEAN, markdown_table, run_suite
from SAMProstateSDGLib.io.dataset import Case
from SAMProstateSDGLib.methods.registry import DEFAULT_METHOD, method
from test_cli import samprostate


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

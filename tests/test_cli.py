"""The ``samprostate`` command: real volumes, real models, real files. The unseen case and ``--version`` run the installed
command as a new process; the rest run its ``main`` in this process (conftest: ``samprostate``)."""

import importlib.metadata
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIXTURES, assert_boxes_near_the_reference, dice, read_mask, samprostate, samprostate_process
from SAMProstateSDGLib import __version__
from SAMProstateSDGLib.apps.evaluation import from_json, markdown_table
from SAMProstateSDGLib.core.catalog import catalog
from SAMProstateSDGLib.masks.boxes import Box

UNSEEN_DICE_FLOOR = 0.80


@pytest.fixture(scope="module")
def unseen_case(data, tmp_path_factory):
    """P158-020 (Prostate158, a site never seen in training) segmented end to end by the installed command."""
    folder = tmp_path_factory.mktemp("unseen")
    image = data / "Prostate158" / "P158-020.nii.gz"
    result = samprostate_process("segment", image, "-o", folder / "labels.nii.gz", "--boxes-out", folder / "boxes.json", "--overlay", folder / "overlay.png")
    (folder / "summary.txt").write_text(result.stdout)
    return image, folder


def flagged_in_boxes_file(path: Path) -> list[int]:
    """The flagged slices a boxes file records: boxed entries whose confidence is flagged, and the slices without a box."""
    data = json.loads(path.read_text(encoding="utf-8"))
    boxed = [entry["slice"] for entry in data["boxes"] if entry.get("confidence", {}).get("flagged")]
    return sorted(boxed + [entry["slice"] for entry in data["slices_to_check_without_box"]])


def slices_to_check_in_summary(summary: str) -> list[int]:
    line = next((line for line in summary.splitlines() if ": check slice(s) " in line), None)
    return [] if line is None else [int(index) for index in line.split(": check slice(s) ")[1].split(" first")[0].split(", ")]


def test_segments_an_unseen_site_case_above_the_dice_floor(unseen_case, data):
    image, folder = unseen_case
    labels = sitk.ReadImage(str(folder / "labels.nii.gz"))
    reference = read_mask(data / "Prostate158" / "P158-020_seg.nii.gz")
    assert dice(sitk.GetArrayFromImage(labels), reference) >= UNSEEN_DICE_FLOOR
    source = sitk.ReadImage(str(image))
    assert labels.GetOrigin() == source.GetOrigin()
    assert labels.GetSpacing() == source.GetSpacing()
    assert labels.GetDirection() == source.GetDirection()
    assert (folder / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_boxes_file_lists_one_box_per_gland_slice(unseen_case, data):
    _, folder = unseen_case
    boxes = json.loads((folder / "boxes.json").read_text())
    assert boxes["format"] == "samprostate-boxes" and boxes["image"]["size"] == [270, 270, 24]
    reference = read_mask(data / "Prostate158" / "P158-020_seg.nii.gz")
    gland_slices = set(np.flatnonzero(reference.any(axis=(1, 2))).tolist())
    proposed = {entry["slice"] for entry in boxes["boxes"]}
    assert len(proposed & gland_slices) >= 0.8 * len(gland_slices)
    pixels = {entry["slice"]: Box(*entry["pixel"]) for entry in boxes["boxes"]}
    assert_boxes_near_the_reference(pixels, reference, sitk.ReadImage(str(data / "Prostate158" / "P158-020.nii.gz")).GetSpacing()[:2])


def test_the_summary_names_the_flagged_slices_of_the_boxes_file(unseen_case):
    _, folder = unseen_case
    listed = slices_to_check_in_summary((folder / "summary.txt").read_text())
    assert listed and listed == flagged_in_boxes_file(folder / "boxes.json")


def test_a_method_that_prompts_itself_lists_its_slices_to_check_without_boxes(tmp_path, data):
    """DeSAM has no boxes for SAM to rate: its flagged slices (agreement with the coarse network, cross-section; here at
    least the base) are all listed as slices without a box, and the summary names the same ones."""
    base = tmp_path / "base.nii.gz"  # P158-020's slices 15-20: the gland's widest slice, the base (its last three) and one past it
    sitk.WriteImage(sitk.ReadImage(str(data / "Prostate158" / "P158-020.nii.gz"))[:, :, 15:21], str(base))
    result = samprostate("segment", base, "-o", tmp_path / "labels.nii.gz", "--method", "desam-box", "--boxes-out", tmp_path / "boxes.json")
    written = json.loads((tmp_path / "boxes.json").read_text())
    assert written["boxes"] == [] and written["slices_to_check_without_box"]
    assert all("predicted_iou" not in entry for entry in written["slices_to_check_without_box"])
    assert slices_to_check_in_summary(result.stdout) == flagged_in_boxes_file(tmp_path / "boxes.json")


def test_the_overlay_shows_six_gland_slices_with_their_box_and_outline(unseen_case):
    """Each tile's yellow frame is one of the boxes written (which names its slice); its red outline lies on that slice's labels."""
    from PIL import Image

    from SAMProstateSDGLib.io.overlay import BOX, OUTLINE

    _, folder = unseen_case
    boxes = {entry["slice"]: np.array(entry["pixel"]) for entry in json.loads((folder / "boxes.json").read_text())["boxes"]}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz"))) > 0
    with Image.open(folder / "overlay.png") as picture:
        sheet = np.asarray(picture.convert("RGB"))
    assert sheet.shape == (2 * 270, 3 * 270, 3)
    shown = []
    for row in range(2):
        for column in range(3):
            tile = sheet[row * 270 : (row + 1) * 270, column * 270 : (column + 1) * 270]
            ys, xs = np.nonzero((tile == BOX).all(axis=2))
            frame = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
            index = next(index for index, box in boxes.items() if np.abs(box - frame).max() <= 1)
            outline = (tile == OUTLINE).all(axis=2)
            assert outline.any() and not (outline & ~labels[index]).any(), index
            shown.append(index)
    assert shown == sorted(shown) and len(set(shown)) == 6


def test_edited_boxes_are_used_instead_of_proposed_ones(tmp_path):
    image = FIXTURES / "Case29.nii.gz"
    samprostate("segment", image, "-o", tmp_path / "proposed.nii.gz", "--boxes-out", tmp_path / "boxes.json")
    boxes = json.loads((tmp_path / "boxes.json").read_text())
    removed = boxes["boxes"].pop(0)["slice"]
    (tmp_path / "edited.json").write_text(json.dumps(boxes))
    samprostate("segment", image, "-o", tmp_path / "edited.nii.gz", "--boxes-in", tmp_path / "edited.json")
    proposed = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "proposed.nii.gz")))
    edited = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "edited.nii.gz")))
    assert proposed[removed].any() and not edited[removed].any()
    kept = [index for index in range(len(proposed)) if abs(index - removed) > 1]  # its neighbour read its logits (z smoothing)
    assert kept and (proposed[kept] == edited[kept]).all()


def _write(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(path))
    return path


def _assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samprostate: error:") and message in lines[0], result.stderr


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda folder: folder / "missing.nii.gz", "not found"),
        (lambda folder: _write(folder / "flat.nii.gz", np.ones((64, 64), np.float32)), "2D"),
        (lambda folder: _write(folder / "series.nii.gz", np.ones((2, 3, 32, 32), np.float32)), "4D"),
        (lambda folder: _write(folder / "constant.nii.gz", np.zeros((4, 32, 32), np.int16)), "constant"),
        (lambda folder: FIXTURES / "P158-020_seg.nii.gz", "holds only the values 0, 1, 2: it is a label map"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, make_input, message):
    output = tmp_path / "out.nii.gz"
    _assert_refused(samprostate("segment", make_input(tmp_path), "-o", output, check=False), message)
    assert not output.exists()


def test_version_is_the_libs_own_and_the_installs_metadata_agrees():
    result = samprostate_process("--version")
    assert result.stdout == f"samprostate {__version__}\n"
    assert importlib.metadata.version("samprostate-sdg") == __version__  # pyproject.toml reads the same attribute


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    output = tmp_path / "mine.nii.gz"
    output.write_bytes(b"the user's own segmentation")
    _assert_refused(samprostate("segment", FIXTURES / "Case00.nii.gz", "-o", output, check=False), "--overwrite")
    assert output.read_bytes() == b"the user's own segmentation"


def test_checkpoint_with_wrong_keys_is_refused(tmp_path):
    checkpoint = tmp_path / "sam.pth"
    import torch

    torch.save({"image_encoder.unexpected": torch.zeros(1)}, checkpoint)
    output = tmp_path / "out.nii.gz"
    result = samprostate("segment", FIXTURES / "Case00.nii.gz", "-o", output, "--sam-checkpoint", checkpoint, "--sam-type", "litemedsam", check=False)
    _assert_refused(result, "wrong keys")
    assert not output.exists()


def test_evaluate_prints_the_table_rows_for_a_folder_of_pairs(tmp_path):
    table = tmp_path / "table.md"
    result = samprostate("evaluate", "--data", FIXTURES, "--cases", "1", "--output", table)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    titles = [line.split(" | ")[0].removeprefix("| ") for line in rows[1:]]
    trained = [title for title in titles if "trained on RUNMC" in title or "fine-tuned on RUNMC" in title]
    assert len(titles) == 6 + len(trained)
    assert {"sammed", "desam-grid", "desam-box", "samed"} <= {entry.id.removesuffix("-litemedsam-runmc") for entry in catalog().values()}
    assert [title.rsplit(": ", 1)[1] for title in trained if "grid points" in title] == ["1 point", "9 points", "25 points", "81 points"]
    assert sum("zone (label" in title for title in trained) == 2
    assert table.read_text().strip() == result.stdout.strip()
    assert markdown_table(from_json(json.loads(table.with_suffix(".json").read_text()))) == table.read_text().strip()  # the JSON holds the table
    upper_bound = next(line for line in rows if "ground-truth boxes" in line)
    assert float(upper_bound.split("**")[1]) > 0.85


def test_a_volume_without_a_gland_gives_an_empty_label_volume_and_a_warning(tmp_path):
    halves = np.zeros((3, 64, 64), np.float32)
    halves[:, :, :32] = 100.0  # two flat halves: nothing that looks like a prostate
    image = sitk.GetImageFromArray(halves)
    image.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(image, str(tmp_path / "halves.nii.gz"))
    result = samprostate("segment", tmp_path / "halves.nii.gz", "-o", tmp_path / "labels.nii.gz")
    assert "found no prostate" in result.stderr
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz"))).any()


def test_a_file_whose_header_states_the_wrong_slice_direction_is_segmented_and_the_user_told(tmp_path, mislabelled_case):
    """P158-021 with its slices stored head to feet under its feet-to-head header (the suite's twelfth condition)."""
    mislabelled, mislabelled_reference = mislabelled_case
    result = samprostate("segment", mislabelled, "-o", tmp_path / "labels.nii.gz",
                         "--report", tmp_path / "report.json", "--report-page", tmp_path / "report.png")
    assert "reversed.nii.gz: the coarse network found the gland with superior and inferior the other way round" in result.stderr
    warnings = json.loads((tmp_path / "report.json").read_text())["warnings"]  # and on the report page, above the slices
    assert len(warnings) == 1 and "superior and inferior the other way round" in warnings[0] and (tmp_path / "report.png").is_file()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    assert dice(labels, mislabelled_reference) > 0.85  # 0.890, as the stored file
    unchecked = samprostate("segment", mislabelled, "-o", tmp_path / "unchecked.nii.gz", "--no-slice-order-check")
    assert "superior and inferior" not in unchecked.stderr
    assert dice(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "unchecked.nii.gz"))), mislabelled_reference) < 0.8  # 0.717


def test_a_batch_reuses_the_models_and_reports_a_bad_volume_without_losing_the_rest(tmp_path):
    bad = _write(tmp_path / "flat.nii.gz", np.ones((64, 64), np.float32))
    inputs = [FIXTURES / "Case29.nii.gz", bad, FIXTURES / "P158-020.nii.gz"]
    result = samprostate("segment", *inputs, "-o", tmp_path / "labels", check=False)
    assert result.returncode == 2
    assert "flat.nii.gz" in result.stderr.strip().splitlines()[-1] and "1 of 3 volumes failed" in result.stderr
    written = sorted(path.name for path in (tmp_path / "labels").iterdir())
    assert written == ["Case29.nii.gz", "P158-020.nii.gz"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels" / "P158-020.nii.gz")))
    assert dice(labels, read_mask(FIXTURES / "P158-020_seg.nii.gz")) > 0.8
    _assert_refused(samprostate("segment", FIXTURES / "Case29.nii.gz", FIXTURES / "P158-020.nii.gz", "-o", tmp_path / "labels", check=False), "--overwrite")

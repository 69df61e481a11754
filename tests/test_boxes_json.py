import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.boxes_json import read_boxes, read_prompts, write_boxes
from SAMProstateSDGLib.io.volume_io import read_volume
from SAMProstateSDGLib.masks.boxes import Box, boxes_from_labels
from SAMProstateSDGLib.masks.clicks import Click


def _flipped(image: sitk.Image) -> sitk.Image:
    """The same voxels with the column and slice axes reversed in the direction matrix."""
    flipped = sitk.Image(image)
    direction = np.array(image.GetDirection()).reshape(3, 3) @ np.diag([-1.0, 1.0, -1.0])
    flipped.SetDirection(direction.ravel().tolist())
    return flipped


@pytest.mark.parametrize("orientation", ["oblique", "flipped"])
def test_physical_corners_map_back_to_the_same_pixel_boxes(tmp_path, orientation):
    image = read_volume(FIXTURES / "Case00.nii.gz")  # an oblique acquisition
    assert not np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-3)
    if orientation == "flipped":
        image = _flipped(image)
    boxes = boxes_from_labels(read_mask(FIXTURES / "Case00_seg.nii.gz"))
    path = tmp_path / "boxes.json"
    write_boxes(path, boxes, image)
    data = json.loads(path.read_text())
    assert read_boxes(path, image) == boxes
    for key in ("ras", "lps"):
        physical_only = dict(data, boxes=[{key: entry[key]} for entry in data["boxes"]])
        path.write_text(json.dumps(physical_only))
        restored = read_boxes(path, image)
        assert restored.keys() == boxes.keys()
        for index, box in boxes.items():
            assert np.allclose(restored[index].as_tuple(), box.as_tuple(), atol=1e-3)


def test_ras_is_lps_with_x_and_y_negated(tmp_path):
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    path = tmp_path / "boxes.json"
    write_boxes(path, boxes_from_labels(read_mask(FIXTURES / "P158-020_seg.nii.gz")), image)
    entry = json.loads(path.read_text())["boxes"][0]
    lps, ras = np.array(entry["lps"]), np.array(entry["ras"])
    assert np.allclose(ras[:, :2], -lps[:, :2]) and np.allclose(ras[:, 2], lps[:, 2])
    assert np.allclose(image.TransformContinuousIndexToPhysicalPoint((*entry["pixel"][:2], entry["slice"])), lps[0])


def test_boxes_for_another_volume_or_outside_it_are_refused(tmp_path):
    image = read_volume(FIXTURES / "Case00.nii.gz")
    path = tmp_path / "boxes.json"
    write_boxes(path, boxes_from_labels(read_mask(FIXTURES / "Case00_seg.nii.gz")), image)
    with pytest.raises(InputError, match="made for a volume of size"):
        read_boxes(path, read_volume(FIXTURES / "P158-020.nii.gz"))
    data = json.loads(path.read_text())
    data["boxes"][0]["slice"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="outside the volume"):
        read_boxes(path, image)
    data["boxes"][0].update(slice=0, pixel=[50, 50, 40, 60])
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="inverted"):
        read_boxes(path, image)
    path.write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        read_boxes(path, image)


def test_a_file_made_for_another_geometry_is_read_by_its_physical_coordinates(tmp_path):
    """The same series stored with its rows the other way (as some converters write it): same size, same anatomy, other
    pixels. The physical corners put the boxes on the same anatomy; pixel boxes alone are refused, never used as they are."""
    image = read_volume(FIXTURES / "Case00.nii.gz")
    boxes = boxes_from_labels(read_mask(FIXTURES / "Case00_seg.nii.gz"))
    path = tmp_path / "boxes.json"
    write_boxes(path, boxes, image)
    rows_reversed = sitk.Flip(image, [False, True, False])  # sitk.Flip keeps every voxel's physical position
    last_row = image.GetSize()[1] - 1
    restored = read_boxes(path, rows_reversed)
    assert restored.keys() == boxes.keys()
    for index, box in boxes.items():
        assert np.allclose(restored[index].as_tuple(), (box.x0, last_row - box.y1, box.x1, last_row - box.y0), atol=1e-3)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, boxes=[{"slice": entry["slice"], "pixel": entry["pixel"]} for entry in data["boxes"]])))
    assert read_boxes(path, image) == boxes
    with pytest.raises(InputError, match=r"made for a volume with another origin, so its pixel coordinates \(\$.boxes\[0\]\) would lie elsewhere"):
        read_boxes(path, rows_reversed)


def _points_file(tmp_path, image, boxes, points):
    path = tmp_path / "prompts.json"
    write_boxes(path, boxes, image, points=points)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("orientation", ["oblique", "flipped"])
def test_points_round_trip_in_pixels_and_physical_coordinates(tmp_path, orientation):
    """Version 2: clicks per slice, with or without a box; the RAS or LPS points alone give the same pixels."""
    image = read_volume(FIXTURES / "Case00.nii.gz")
    if orientation == "flipped":
        image = _flipped(image)
    boxes = boxes_from_labels(read_mask(FIXTURES / "Case00_seg.nii.gz"))
    first, last = min(boxes), max(boxes)
    points = {first: (Click(150.0, 140.0, True), Click(120.5, 200.0, False)), last + 0: (Click(160.0, 150.0, True),)}
    del boxes[last]  # a slice with clicks only
    path, data = _points_file(tmp_path, image, boxes, points)
    assert data["version"] == 2
    entry = next(entry for entry in data["boxes"] if entry["slice"] == first)
    assert entry["points"] == [[150.0, 140.0, 1], [120.5, 200.0, 0]]
    assert np.allclose(np.array(entry["points_ras"])[:, :2], -np.array(entry["points_lps"])[:, :2])
    assert [point[3] for point in entry["points_ras"]] == [1, 0]
    assert read_prompts(path, image) == (boxes, points)
    assert read_boxes(path, image) == boxes
    for key in ("points_ras", "points_lps"):
        physical = dict(data, boxes=[{key: entry[key]} for entry in data["boxes"] if key in entry])
        path.write_text(json.dumps(physical))
        restored_boxes, restored = read_prompts(path, image)
        assert restored_boxes == {} and restored.keys() == points.keys()
        for index, clicks in points.items():
            assert [click.positive for click in restored[index]] == [click.positive for click in clicks]
            assert np.allclose([(click.x, click.y) for click in restored[index]], [(click.x, click.y) for click in clicks], atol=1e-3)


def test_version_1_files_are_still_read(tmp_path):
    image = read_volume(FIXTURES / "Case29.nii.gz")
    boxes = boxes_from_labels(read_mask(FIXTURES / "Case29_seg.nii.gz"))
    path, data = _points_file(tmp_path, image, boxes, None)
    path.write_text(json.dumps(dict(data, version=1)))
    assert read_prompts(path, image) == (boxes, {})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda data: data["boxes"][0].update(points=[[10, 10, 2]]), r"\$\.boxes\[0\]\.points\[0\]\[2\]"),
        (lambda data: data["boxes"][0].update(points=[[10, 10]]), "too short"),
        (lambda data: data["boxes"][0].update(points=[]), "should be non-empty"),
        (lambda data: data.update(version=1), "points need \"version\": 2"),  # points arrived with version 2
        (lambda data: data["boxes"][0].update(points=[[999, 10, 1]]), "lies outside the"),
        (lambda data: data.update(version=3), "is not one of"),
    ],
)
def test_invalid_points_are_refused_naming_the_field(tmp_path, change, message):
    image = read_volume(FIXTURES / "Case29.nii.gz")
    boxes = boxes_from_labels(read_mask(FIXTURES / "Case29_seg.nii.gz"))
    path, data = _points_file(tmp_path, image, boxes, {min(boxes): (Click(100.0, 100.0, True),)})
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        read_prompts(path, image)


def test_physical_points_on_two_slices_are_refused(tmp_path):
    image = read_volume(FIXTURES / "Case29.nii.gz")
    path, data = _points_file(tmp_path, image, {}, {1: (Click(100.0, 100.0, True),), 2: (Click(90.0, 90.0, False),)})
    merged = [data["boxes"][0]["points_ras"][0], data["boxes"][1]["points_ras"][0]]
    path.write_text(json.dumps(dict(data, boxes=[{"points_ras": merged}])))
    with pytest.raises(InputError, match="different slices"):
        read_prompts(path, image)


def test_a_file_read_on_a_volume_with_another_z_origin_goes_by_its_physical_corners(tmp_path):
    """The recorded "slice" indexes the volume the file was made for: on a volume whose slices start one slice lower the
    same anatomy is one slice further on, and the physical corners say so (the old slice number was refused)."""
    image = read_volume(FIXTURES / "Case29.nii.gz")
    last = image.GetSize()[2] - 1
    boxes = {index: box for index, box in boxes_from_labels(read_mask(FIXTURES / "Case29_seg.nii.gz")).items() if index < last}
    path = tmp_path / "boxes.json"
    write_boxes(path, boxes, image)
    shifted = sitk.Image(image)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shifted.SetOrigin((np.array(image.GetOrigin()) - direction[:, 2] * image.GetSpacing()[2]).tolist())
    restored = read_boxes(path, shifted)
    assert sorted(restored) == [index + 1 for index in sorted(boxes)]
    for index, box in boxes.items():
        assert np.allclose(restored[index + 1].as_tuple(), box.as_tuple(), atol=1e-3)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda data: data["boxes"][0].pop("slice"), r"'slice' is a dependency of 'pixel'"),  # was a KeyError traceback
        (lambda data: data["boxes"].append(dict(data["boxes"][0])), r"\$\.boxes\[0\] and \$\.boxes\[\d+\] are both on slice"),
        (lambda data: data["boxes"][0]["lps"][1].__setitem__(2, data["boxes"][0]["lps"][1][2] + 9.0), "corners lie on different slices"),
    ],
)
def test_entries_without_a_slice_twice_on_one_or_across_slices_are_refused(tmp_path, change, message):
    image = read_volume(FIXTURES / "Case29.nii.gz")
    boxes = boxes_from_labels(read_mask(FIXTURES / "Case29_seg.nii.gz"))
    path, data = _points_file(tmp_path, image, boxes, None)
    if "corners" in message:
        data["boxes"] = [{"lps": entry["lps"]} for entry in data["boxes"]]
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        read_prompts(path, image)


def test_a_one_pixel_wide_box_is_read_and_a_box_over_the_edge_is_clipped_to_the_slice(tmp_path):
    """[x0, y0, x1, y1] are the first and last covered column and row: x0 == x1 is one column (``--margin-mm 0`` on a thin
    component writes it); a box reaching past the slice is clipped as the proposed boxes are, not sent to SAM as it is."""
    image = read_volume(FIXTURES / "Case29.nii.gz")
    width, height = image.GetSize()[:2]
    path, data = _points_file(tmp_path, image, {1: Box(30.0, 10.0, 30.0, 19.0), 2: Box(-500.0, 40.0, 60.0, height + 100.0)}, None)
    path.write_text(json.dumps(dict(data, boxes=[{"slice": entry["slice"], "pixel": entry["pixel"]} for entry in data["boxes"]])))
    assert read_boxes(path, image) == {1: Box(30.0, 10.0, 30.0, 19.0), 2: Box(0.0, 40.0, 60.0, height - 1.0)}
    assert width > 60

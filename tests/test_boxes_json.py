import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.boxes_json import read_boxes, write_boxes
from SAMProstateSDGLib.io.volume_io import read_volume
from SAMProstateSDGLib.masks.boxes import boxes_from_labels


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

"""Per-slice confidence, on real fixtures with the shipped models."""

import json

import numpy as np
import pytest

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.io.boxes_json import read_boxes, write_boxes
from SAMProstateSDGLib.io.volume_io import read_volume
from SAMProstateSDGLib.masks.boxes import Box, ComponentFilter, ProposalOptions, boxes_from_labels, filtered_mask, propose_boxes
from SAMProstateSDGLib.masks.confidence import SliceConfidence, flagged_slices


def test_a_box_on_the_gland_is_confident_and_a_box_beside_it_is_flagged(segmenter):
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    reference = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    volume = segmenter.prepare(image)
    good = boxes_from_labels(reference)
    first, second = np.argsort(reference.sum(axis=(1, 2)))[::-1][:2].tolist()  # the two mid-gland slices of the crop
    box = good[second]
    width = box.x1 - box.x0
    beside = Box(min(box.x1 + 10, 268 - width), box.y0, min(box.x1 + 10 + width, 268), box.y1)  # same size, beside the gland
    session = segmenter.box_session(volume, {first: good[first], second: beside})
    confidences = segmenter.slice_confidence(volume, session.labels, session.predicted_iou)
    assert {index for index, confidence in confidences.items() if confidence.segmented} == {first, second}
    assert confidences[first].predicted_iou > 0.8 and confidences[first].coarse_agreement > 0.7
    assert not confidences[first].flagged
    assert confidences[second].coarse_agreement < 0.6 and confidences[second].flagged
    assert [index for index in flagged_slices(confidences) if confidences[index].segmented] == [second]


def test_confidence_is_an_optional_field_of_the_boxes_file(tmp_path, segmenter):
    image = read_volume(FIXTURES / "Case29.nii.gz")
    volume = segmenter.prepare(image)
    boxes = segmenter.propose_boxes(volume)
    session = segmenter.box_session(volume, boxes)
    confidences = segmenter.slice_confidence(volume, session.labels, session.predicted_iou)
    path = tmp_path / "boxes.json"
    write_boxes(path, boxes, image, confidences)
    data = json.loads(path.read_text())
    assert data["version"] == 2
    entry = data["boxes"][0]
    assert set(entry["confidence"]) == {"predicted_iou", "coarse_agreement", "relative_area", "flagged"}
    areas = (session.labels > 0).sum(axis=(1, 2))
    for entry in data["boxes"]:  # each slice's own values, as computed
        expected = confidences[entry["slice"]]
        assert entry["confidence"]["predicted_iou"] == pytest.approx(expected.predicted_iou, abs=1e-4)
        assert entry["confidence"]["coarse_agreement"] == pytest.approx(expected.coarse_agreement, abs=1e-4)
        assert entry["confidence"]["relative_area"] == pytest.approx(areas[entry["slice"]] / areas.max(), abs=1e-4)
        assert entry["confidence"]["flagged"] is expected.flagged
    assert read_boxes(path, image) == boxes  # readers ignore the field


@pytest.mark.parametrize("name", ["P158-020", "Case29", "Case00"])
def test_boxes_and_the_confidence_component_come_from_one_cached_filtering_equal_to_the_uncached_path(segmenter, name):
    """``ProstateSegmenter.propose_boxes`` and ``slice_confidence`` share the volume's filtered coarse component
    (filtered once per threshold and filter); the boxes are those ``masks.boxes.propose_boxes`` takes inside its window."""
    volume = segmenter.prepare(read_volume(FIXTURES / f"{name}.nii.gz"))
    probabilities, spacing = segmenter.coarse_probabilities(volume), volume.image.GetSpacing()
    for component_filter in ComponentFilter:
        options = ProposalOptions(component_filter=component_filter)
        boxes = segmenter.propose_boxes(volume, options)
        assert boxes and boxes == propose_boxes(probabilities, spacing, options), component_filter
        assert (segmenter.coarse_component(volume, options) == filtered_mask(probabilities, options.threshold, component_filter, spacing)).all()
    assert len(volume.components) == len(ComponentFilter)
    assert segmenter.coarse_component(volume) is volume.components[segmenter.options.threshold, segmenter.options.component_filter]


def test_a_small_cross_section_and_gland_past_the_last_box_are_flagged(tmp_path, segmenter):
    """A slice whose mask is under a fifth of the largest (apex, base) is flagged even where SAM is sure of it; a slice
    without a box just past the boxed extent is listed when the coarse network still sees gland there, and not when
    it sees none."""
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    reference = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    volume = segmenter.prepare(image)
    good = boxes_from_labels(reference)
    assert sorted(good) == [0, 1, 2, 3]
    largest = int(np.argmax(reference.sum(axis=(1, 2))))
    small = next(index for index in (1, 2) if index != largest)
    box = good[small]
    centre_x, centre_y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    tiny = Box(centre_x - 6, centre_y - 6, centre_x + 6, centre_y + 6)  # a box a tenth of the gland's width
    session = segmenter.box_session(volume, {0: good[0], 1: good[1], 2: good[2]} | {small: tiny})
    confidences = segmenter.slice_confidence(volume, session.labels, session.predicted_iou)
    areas = (session.labels > 0).sum(axis=(1, 2))
    assert confidences[small].relative_area == pytest.approx(areas[small] / areas.max()) and confidences[small].relative_area < 0.2
    assert confidences[small].flagged
    past = confidences[3]  # no box on the crop's last slice, which holds gland
    assert not past.segmented and past.coarse_probability == pytest.approx(float(segmenter.coarse_probabilities(volume)[3].max()))
    assert past.coarse_probability > 0.9 and past.flagged
    assert 3 in flagged_slices(confidences) and small in flagged_slices(confidences)
    path = tmp_path / "boxes.json"
    write_boxes(path, session.boxes, image, confidences)
    listed = json.loads(path.read_text())["slices_to_check_without_box"]
    assert [entry["slice"] for entry in listed] == [3] and listed[0]["flagged"] is True
    nothing_past = SliceConfidence(coarse_probability=0.1)
    assert not nothing_past.flagged and "not segmented" in nothing_past.describe()


def test_a_method_that_prompts_itself_is_flagged_where_its_mask_and_the_coarse_component_disagree(segmenter):
    """Without a box there is no predicted IoU of SAM's (DeSAM, SAMed): every slice where the mask or the coarse
    component has gland is scored by agreement and cross-section, so a slice the mask misses is flagged."""
    image = read_volume(FIXTURES / "Case29.nii.gz")
    reference = read_mask(FIXTURES / "Case29_seg.nii.gz") > 0
    volume = segmenter.prepare(image)
    component = segmenter.coarse_component(volume)
    areas = reference.sum(axis=(1, 2))
    missed, kept = np.argsort(areas)[::-1][:2].tolist()  # the two largest cross-sections: one missed, one kept
    mask = reference.copy()
    mask[missed] = False
    confidences = segmenter.slice_confidence(volume, mask.astype(np.uint8))
    with_gland = set(np.flatnonzero((mask | component).any(axis=(1, 2))).tolist())
    assert {index for index, confidence in confidences.items() if confidence.segmented} == with_gland
    assert all(confidence.predicted_iou is None for confidence in confidences.values())
    assert confidences[missed].coarse_agreement == 0 and confidences[missed].flagged
    assert confidences[kept].coarse_agreement > 0.8 and confidences[kept].relative_area == 1.0 and not confidences[kept].flagged
    assert confidences[kept].describe().startswith("agreement with the coarse mask")

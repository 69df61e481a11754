"""Per-slice confidence and the plausible component choice, on real fixtures with the shipped models."""

import json

import numpy as np

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.boxes import Box, ComponentFilter, ProposalOptions, boxes_from_labels, filtered_mask, propose_boxes
from SAMProstateSDGLib.boxes_json import read_boxes, write_boxes
from SAMProstateSDGLib.component_choice import choose_component, component_features
from SAMProstateSDGLib.confidence import flagged_slices
from SAMProstateSDGLib.volume_io import read_volume


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
    confidences = segmenter.slice_confidence(volume, session)
    assert set(confidences) == {first, second}
    assert confidences[first].predicted_iou > 0.8 and confidences[first].coarse_agreement > 0.7
    assert not confidences[first].flagged
    assert confidences[second].coarse_agreement < 0.3 and confidences[second].flagged
    assert flagged_slices(confidences) == [second]


def test_confidence_is_an_optional_field_of_the_boxes_file(tmp_path, segmenter):
    image = read_volume(FIXTURES / "Case29.nii.gz")
    volume = segmenter.prepare(image)
    boxes = segmenter.propose_boxes(volume)
    session = segmenter.box_session(volume, boxes)
    confidences = segmenter.slice_confidence(volume, session)
    path = tmp_path / "boxes.json"
    write_boxes(path, boxes, image, confidences)
    data = json.loads(path.read_text())
    assert data["version"] == 1
    entry = data["boxes"][0]
    assert set(entry["confidence"]) == {"predicted_iou", "coarse_agreement", "flagged"}
    assert 0 <= entry["confidence"]["predicted_iou"] <= 1.2 and 0 <= entry["confidence"]["coarse_agreement"] <= 1
    assert read_boxes(path, image) == boxes  # readers of version 1 ignore the field


def test_the_plausible_component_is_the_gland_not_a_larger_irregular_region():
    """A coarse mask with half the real gland (confident, continuous) and a larger region on other
    slices whose cross-sections jump from slice to slice (as the bladder side under a coil field)."""
    gland = read_mask(FIXTURES / "Case00_seg.nii.gz")
    half = gland.copy()
    half[:, : int(np.median(np.nonzero(gland)[1]))] = False  # only the posterior half was found
    mask = np.concatenate([half, np.zeros((4, *gland.shape[1:]), dtype=bool)])
    probabilities = np.where(mask, 0.95, 0.0).astype(np.float32)
    for step, offset in enumerate((0, 40, 0, 40)):
        rows, columns = slice(20 + offset, 110 + offset), slice(20 + 3 * offset // 2, 110 + 3 * offset // 2)
        mask[4 + step, rows, columns] = True  # consecutive squares overlap a little: one component
        probabilities[4 + step, rows, columns] = 0.8
    assert np.unique(choose_component(mask, probabilities, (0.6, 0.6, 4.0), plausible=False)[4:].sum(axis=(1, 2))).tolist() == [8100]
    spacing = (0.6, 0.6, 4.0)
    largest = choose_component(mask, probabilities, spacing, plausible=False)
    plausible = choose_component(mask, probabilities, spacing, plausible=True)
    assert largest[4:].any() and not largest[:4].any()
    assert (plausible == np.concatenate([half, np.zeros_like(half)])).all()
    features = component_features(plausible, probabilities, spacing)
    assert 2 <= features.volume_ml <= 200 and features.continuity > 0.5
    boxes = propose_boxes(probabilities, spacing, ProposalOptions(component_filter=ComponentFilter.PLAUSIBLE, margin_mm=0))
    assert sorted(boxes) == [0, 1, 2, 3]
    assert (filtered_mask(probabilities, component_filter=ComponentFilter.PLAUSIBLE, spacing_xyz=spacing) == plausible).all()

import numpy as np

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.boxes import (
    Box,
    ComponentFilter,
    ProposalOptions,
    bounding_box,
    boxes_from_labels,
    filtered_mask,
    largest_component,
    propose_boxes,
)


def _with_distractors(mask: np.ndarray) -> np.ndarray:
    """The reference gland plus a small false-positive blob on every slice, far from the gland."""
    noisy = mask.copy()
    noisy[:, 5:12, 5:12] = True
    return noisy


def test_largest_component_drops_the_false_positive_blob_on_real_masks():
    mask = read_mask(FIXTURES / "Case00_seg.nii.gz")
    kept = np.stack([largest_component(plane) for plane in _with_distractors(mask)])
    assert (kept == mask).all()


def test_bounding_box_is_tight_then_widened_and_clamped():
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:21, 3:31] = True
    assert bounding_box(mask) == Box(3, 10, 30, 20)
    assert bounding_box(mask, margin=(5, 2)) == Box(0, 8, 35, 22)
    assert bounding_box(np.zeros((5, 5), dtype=bool)) is None


def test_slices_without_a_component_get_no_box():
    probabilities = np.zeros((3, 40, 40), dtype=np.float32)
    probabilities[1, 10:20, 12:30] = 0.9
    probabilities[2, 10:20, 12:30] = 0.7  # below the 0.75 threshold
    boxes = propose_boxes(probabilities, (0.5, 0.5), ProposalOptions(margin_mm=1.0))
    assert list(boxes) == [1]
    assert boxes[1] == Box(10, 8, 31, 21)


def test_unfiltered_boxes_span_the_distractor_and_filtered_ones_do_not():
    mask = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    probabilities = _with_distractors(mask).astype(np.float32)
    reference = boxes_from_labels(mask)
    unfiltered = propose_boxes(probabilities, (0.4, 0.4), ProposalOptions(component_filter=ComponentFilter.NONE, margin_mm=0))
    filtered = propose_boxes(probabilities, (0.4, 0.4), ProposalOptions(component_filter=ComponentFilter.SLICE, margin_mm=0))
    assert filtered == reference
    assert all(unfiltered[index].x0 == 5 for index in reference)


def test_3d_filter_keeps_only_the_largest_volume_component():
    probabilities = np.zeros((4, 30, 30), dtype=np.float32)
    probabilities[0:3, 5:15, 5:15] = 1.0  # the gland, across three slices
    probabilities[3, 20:28, 20:28] = 1.0  # a larger-per-slice blob on a slice of its own
    kept = filtered_mask(probabilities, component_filter=ComponentFilter.VOLUME)
    assert kept[:3].any(axis=(1, 2)).all() and not kept[3].any()
    per_slice = filtered_mask(probabilities, component_filter=ComponentFilter.SLICE)
    assert per_slice[3].any()


def test_clicks_edit_a_box_for_box_only_models():
    from SAMProstateSDGLib.boxes import box_from_clicks

    box = Box(10.0, 10.0, 20.0, 20.0)
    assert box_from_clicks(box, ((15.0, 15.0),), (1,), (64, 64)) == box  # a click inside changes nothing
    assert box_from_clicks(box, ((30.0, 15.0),), (1,), (64, 64)) == Box(10.0, 10.0, 32.0, 20.0)
    assert box_from_clicks(box, ((19.0, 15.0),), (0,), (64, 64)) == Box(10.0, 10.0, 17.0, 20.0)
    assert box_from_clicks(box, ((15.0, 11.0),), (0,), (64, 64)) == Box(10.0, 13.0, 20.0, 20.0)
    assert box_from_clicks(None, ((15.0, 15.0),), (1,), (64, 64)) is None
    assert box_from_clicks(None, ((5.0, 6.0), (40.0, 30.0)), (1, 1), (64, 64)) == Box(3.0, 4.0, 42.0, 32.0)
    assert box_from_clicks(box, ((70.0, -5.0),), (1,), (64, 64)) == Box(10.0, 0.0, 63.0, 20.0)  # kept inside the slice

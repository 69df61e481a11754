import numpy as np
import pytest

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.masks.boxes import (
    Box,
    ComponentFilter,
    ProposalOptions,
    borrowed_box,
    boxes_from_labels,
    filtered_mask,
    largest_component,
    largest_component_per_slice,
    propose_boxes,
    slice_boxes,
    start_box,
)


def _with_distractors(mask: np.ndarray) -> np.ndarray:
    """The reference gland plus a small false-positive blob on every slice, far from the gland."""
    noisy = mask.copy()
    noisy[:, 5:12, 5:12] = True
    return noisy


def test_largest_component_drops_the_false_positive_blob_on_real_masks():
    mask = read_mask(FIXTURES / "Case00_seg.nii.gz")
    noisy = _with_distractors(mask)
    assert (np.stack([largest_component(plane) for plane in noisy]) == mask).all()
    assert (largest_component_per_slice(noisy) == mask).all()


def test_per_slice_components_never_join_across_slices_and_ties_keep_the_first():
    mask = np.zeros((2, 9, 9), dtype=bool)
    mask[0, 0:2, 0:2] = True  # 4 pixels, first in raster order
    mask[0, 6:8, 6:8] = True  # 4 pixels, a tie
    mask[1, 0:3, 0:3] = True  # 9 pixels on the next slice, right under the first blob
    mask[1, 5, 5] = True
    kept = largest_component_per_slice(mask)
    assert kept[0].sum() == 4 and kept[0, 0, 0] and (kept[1] == np.pad(np.ones((3, 3), bool), ((0, 6), (0, 6)))).all()


def test_slice_boxes_are_tight_then_widened_and_clamped():
    mask = np.zeros((3, 50, 60), dtype=bool)
    mask[1, 10:21, 3:31] = True
    assert slice_boxes(mask) == {1: Box(3, 10, 30, 20)}
    assert slice_boxes(mask, margin=(5, 2)) == {1: Box(0, 8, 35, 22)}
    assert slice_boxes(np.zeros((2, 5, 5), dtype=bool)) == {}


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


@pytest.mark.parametrize("component_filter, slice_0", [
    (ComponentFilter.SLICE, Box(17, 7, 32, 22)),
    (ComponentFilter.VOLUME, Box(17, 7, 32, 22)),
    (ComponentFilter.NONE, Box(17, 7, 49, 39)),  # the blob's corner: widened by 3 px, then stopped at the slice's edges
])
def test_boxes_found_in_the_foreground_window_are_placed_and_clamped_in_the_whole_slice(component_filter, slice_0):
    """Components are searched in the foreground's window (here rows 10-39, columns 20-48): boxes come back in slice pixels."""
    probabilities = np.zeros((2, 40, 50), dtype=np.float32)
    probabilities[0, 10:20, 20:30] = 0.9  # the gland, 10 x 10
    probabilities[1, 12:18, 22:28] = 0.9  # and on the next slice, 6 x 6
    probabilities[0, 37:40, 47:49] = 0.9  # a blob in the corner, touching the bottom and right edges
    boxes = propose_boxes(probabilities, (0.5, 0.5, 3.0), ProposalOptions(component_filter=component_filter, margin_mm=1.5))
    assert boxes == {0: slice_0, 1: Box(19, 9, 30, 20)}


def test_3d_filter_keeps_only_the_largest_volume_component():
    probabilities = np.zeros((4, 30, 30), dtype=np.float32)
    probabilities[0:3, 5:15, 5:15] = 1.0  # the gland, across three slices
    probabilities[3, 20:28, 20:28] = 1.0  # a larger-per-slice blob on a slice of its own
    kept = filtered_mask(probabilities, component_filter=ComponentFilter.VOLUME)
    assert kept[:3].any(axis=(1, 2)).all() and not kept[3].any()
    per_slice = filtered_mask(probabilities, component_filter=ComponentFilter.SLICE)
    assert per_slice[3].any()


def test_clicks_edit_a_box_for_box_only_models():
    from SAMProstateSDGLib.masks.boxes import box_from_clicks

    box = Box(10.0, 10.0, 20.0, 20.0)
    assert box_from_clicks(box, ((15.0, 15.0),), (1,), (64, 64)) == box  # a click inside changes nothing
    assert box_from_clicks(box, ((30.0, 15.0),), (1,), (64, 64)) == Box(10.0, 10.0, 32.0, 20.0)
    assert box_from_clicks(box, ((19.0, 15.0),), (0,), (64, 64)) == Box(10.0, 10.0, 17.0, 20.0)
    assert box_from_clicks(box, ((15.0, 11.0),), (0,), (64, 64)) == Box(10.0, 13.0, 20.0, 20.0)
    assert box_from_clicks(None, ((15.0, 15.0),), (1,), (64, 64)) is None
    assert box_from_clicks(None, ((5.0, 6.0), (40.0, 30.0)), (1, 1), (64, 64)) == Box(3.0, 4.0, 42.0, 32.0)
    assert box_from_clicks(box, ((70.0, -5.0),), (1,), (64, 64)) == Box(10.0, 0.0, 63.0, 20.0)  # kept inside the slice


def test_a_slice_without_a_box_borrows_the_nearest_box_shrunk_around_its_first_positive_click():
    from SAMProstateSDGLib.masks.boxes import BORROWED_BOX_SCALE

    boxes = {3: Box(10.0, 10.0, 30.0, 20.0), 7: Box(0.0, 0.0, 50.0, 50.0)}
    box = borrowed_box(boxes, 4, ((5.0, 5.0), (40.0, 30.0)), (0, 1), (64, 64))  # slice 3 is nearest; the negative click is not a centre
    half_width, half_height = BORROWED_BOX_SCALE * 10.0, BORROWED_BOX_SCALE * 5.0
    assert box == Box(40.0 - half_width, 30.0 - half_height, 40.0 + half_width, 30.0 + half_height)
    assert borrowed_box(boxes, 5, ((40.0, 30.0),), (1,), (64, 64)) == box  # equally near: the lower slice
    assert borrowed_box(boxes, 9, ((60.0, 2.0),), (1,), (64, 64)) == Box(60.0 - 20.0, 0.0, 63.0, 2.0 + 20.0)  # kept inside the slice
    assert borrowed_box(boxes, 4, ((40.0, 30.0),), (0,), (64, 64)) is None  # no positive click to centre it on
    assert borrowed_box({}, 4, ((40.0, 30.0),), (1,), (64, 64)) is None


def test_a_click_where_the_coarse_network_still_sees_gland_starts_from_that_region_grown_2_mm():
    """Below the proposals' threshold but above the flags' 0.30, the region under the first positive click gives the
    box (0.5 mm pixels: 2 mm is 4 columns, 0.25 mm rows: 8 rows); elsewhere the borrowed box, as without probabilities."""
    probabilities = np.zeros((64, 64), dtype=np.float32)
    probabilities[20:31, 30:41] = 0.5  # the gland past the boxes, seen at p 0.5
    probabilities[50:55, 5:10] = 0.9  # another region, not under the click
    boxes = {3: Box(10.0, 10.0, 30.0, 20.0)}
    box = start_box(boxes, 4, ((33.0, 25.0),), (1,), (64, 64), probabilities, (0.5, 0.25))
    assert box == Box(30.0 - 4, 20.0 - 8, 40.0 + 4, 30.0 + 8)
    assert start_box(boxes, 4, ((5.0, 5.0), (33.0, 25.0)), (0, 1), (64, 64), probabilities, (0.5, 0.25)) == box  # the first positive click
    outside = ((15.0, 45.0),)
    assert start_box(boxes, 4, outside, (1,), (64, 64), probabilities, (0.5, 0.25)) == borrowed_box(boxes, 4, outside, (1,), (64, 64))
    assert start_box(boxes, 4, ((33.0, 25.0),), (1,), (64, 64), None, (0.5, 0.25)) == borrowed_box(boxes, 4, ((33.0, 25.0),), (1,), (64, 64))
    assert start_box(boxes, 4, ((33.0, 25.0),), (0,), (64, 64), probabilities, (0.5, 0.25)) is None  # no positive click

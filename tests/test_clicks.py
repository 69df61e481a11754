"""The simulated user's next click: synthetic masks where the answer is known, and a real fixture slice."""

import numpy as np
import pytest

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.masks.clicks import CLICK_LOGIT_MARGIN, CLICK_THRESHOLD_REACH, Click, click_threshold, largest_error_region, next_click


def disc(shape, centre, radius):
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


def test_a_missed_disc_gets_a_positive_click_at_its_centre():
    reference = disc((64, 64), (30, 40), 10)
    click = next_click(np.zeros_like(reference), reference)
    assert click == Click(40.0, 30.0, True)
    assert click.label == 1


def test_a_false_positive_square_gets_a_negative_click_at_its_centre():
    reference = np.zeros((50, 50), dtype=bool)
    reference[5:15, 5:15] = True  # predicted exactly
    prediction = reference.copy()
    prediction[30:41, 20:31] = True  # 11 x 11 spurious square, centre row 35, column 25
    assert next_click(prediction, reference) == Click(25.0, 35.0, False)


def test_the_largest_error_region_wins_whatever_its_kind():
    reference = np.zeros((80, 80), dtype=bool)
    reference[10:20, 10:20] = True  # 100 pixels, all missed
    prediction = np.zeros_like(reference)
    prediction[50:71, 50:71] = True  # 441 pixels, all wrong
    region, positive = largest_error_region(prediction, reference)
    assert not positive and region.sum() == 441
    assert next_click(prediction, reference) == Click(60.0, 60.0, False)
    reference[50:71, 50:71] = True  # now the square is right and only the small miss remains
    assert next_click(prediction, reference) == Click(14.0, 14.0, True)  # the first of the four deepest pixels in raster order


def test_the_slice_edge_counts_as_a_border():
    """A missed band along the top edge: the click goes to its middle row, not onto the edge."""
    reference = np.zeros((40, 40), dtype=bool)
    reference[0:9, 10:31] = True
    click = next_click(np.zeros_like(reference), reference)
    assert (click.y, click.x, click.positive) == (4.0, 20.0, True)


def test_no_click_when_the_prediction_is_right():
    reference = disc((32, 32), (16, 16), 6)
    assert next_click(reference.copy(), reference) is None
    assert largest_error_region(reference, reference) is None


def test_a_click_on_a_real_fixture_slice_lies_in_the_error_and_deep_inside_it():
    """Case29's mid slice: the prediction is the gland shrunk by erosion plus a blob outside it;
    the click lies in the larger error region, as far from its border as any of its pixels."""
    from scipy import ndimage

    reference = read_mask(FIXTURES / "Case29_seg.nii.gz")
    index = int(np.argmax(reference.sum(axis=(1, 2))))
    gland = reference[index]
    prediction = ndimage.binary_erosion(gland, iterations=6)
    rows, columns = np.nonzero(gland)
    outside = disc(gland.shape, (rows.min() - 12, columns.mean()), 4) & ~gland  # a small false positive above the gland
    prediction |= outside
    missed = gland & ~prediction
    assert missed.sum() > outside.sum()
    click = next_click(prediction, gland)
    assert click.positive and missed[int(click.y), int(click.x)]
    depth = ndimage.distance_transform_edt(np.pad(missed, 1))[1:-1, 1:-1]
    assert depth[int(click.y), int(click.x)] == pytest.approx(depth.max())
    prediction |= gland  # the whole gland found: only the blob is left, and it is removed by a negative click
    click = next_click(prediction, gland)
    assert not click.positive and outside[int(click.y), int(click.x)]


def cone(shape=(64, 64), centre=(32, 32)) -> np.ndarray:
    """Logits falling by one per pixel from 10 at ``centre``: the level sets are discs."""
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return 10.0 - np.hypot(rows - centre[0], columns - centre[1])


def test_a_click_the_decoder_already_honours_keeps_its_threshold():
    logits = cone()
    assert click_threshold(logits, (), 0.0) == 0.0
    assert click_threshold(logits, (Click(32, 35, True), Click(32, 50, False)), 0.0) == 0.0


def test_a_negative_click_inside_the_mask_moves_the_threshold_just_past_it():
    """A negative click 8 pixels from the centre (logit 2) of a disc of radius 10: the disc shrinks to radius 8 − margin."""
    threshold = click_threshold(cone(), (Click(40, 32, False),), 0.0)
    assert threshold == pytest.approx(2.0 + CLICK_LOGIT_MARGIN)
    mask = cone() > threshold
    assert not mask[32, 40] and mask[32, 39 - round(CLICK_LOGIT_MARGIN)]


def test_a_positive_click_outside_the_mask_grows_it_to_take_the_click_in():
    threshold = click_threshold(cone(), (Click(32, 44, True),), 0.0)
    assert threshold == pytest.approx(-2.0 - CLICK_LOGIT_MARGIN)
    assert (cone() > threshold)[44, 32]


def test_clicks_that_no_threshold_satisfies_leave_the_decision_to_the_latest():
    """A negative click at logit 3 and a positive one at logit 2: no level set has both, the latest decides."""
    clicks = (Click(32, 39, False), Click(32, 40, True))
    assert click_threshold(cone(), clicks, 0.0) == 0.0  # the latest (positive) click is inside already
    clicks = (Click(32, 40, True), Click(32, 39, False))
    assert click_threshold(cone(), clicks, 0.0) == pytest.approx(3.0 + CLICK_LOGIT_MARGIN)


def test_the_threshold_moves_at_most_its_reach():
    """A negative click at the centre (logit 10) of a confident region does not empty the slice."""
    assert click_threshold(cone(), (Click(32, 32, False),), 0.0) == CLICK_THRESHOLD_REACH
    assert click_threshold(cone(), (Click(0, 0, True),), 0.0) == -CLICK_THRESHOLD_REACH

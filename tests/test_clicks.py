"""The simulated user's next click: synthetic masks where the answer is known, and a real fixture slice."""

import numpy as np
import pytest

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.masks.clicks import Click, largest_error_region, next_click


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

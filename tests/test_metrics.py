"""Dice and HD95 (MONAI) against expectations worked out by hand, on anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SAMProstateSDGLib.masks.metrics import score

SPACING_ZYX = (3.0, 0.5, 0.25)  # thick slices, finer rows, finest columns: any axis mix-up changes the answer


def _voxels(*positions: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros((8, 12, 16), dtype=bool)
    for position in positions:
        mask[position] = True
    return mask


@pytest.mark.parametrize(
    ("moved", "expected_mm"),
    [
        ((3, 5, 5), 3.0),  # one slice apart: 1 × 3.0 mm
        ((2, 7, 5), 1.0),  # two rows apart: 2 × 0.5 mm
        ((2, 5, 9), 1.0),  # four columns apart: 4 × 0.25 mm
        ((3, 9, 5), 3.605551),  # one slice and four rows: sqrt(3² + 2²)
    ],
)
def test_hd95_of_single_voxels_is_their_distance_in_millimetres(moved, expected_mm):
    reference = _voxels((2, 5, 5))
    result = score(_voxels(moved), reference, SPACING_ZYX)
    assert result.hd95_mm == pytest.approx(expected_mm, abs=1e-5)
    assert result.dice == 0.0


def test_hd95_takes_the_95th_percentile_not_the_maximum():
    """Forty surface voxels on a reference slab, prediction the same slab plus one stray voxel 6 slices away.

    The stray voxel is 1 of 41 prediction surface voxels (2.4 %), so the 95th percentile ignores it: HD95 is 0,
    while the plain Hausdorff distance would be 6 slices × 3 mm."""
    reference = np.zeros((8, 12, 16), dtype=bool)
    reference[1, 2:6, 2:12] = True  # one slice thick: every voxel is on the surface
    prediction = reference.copy()
    prediction[7, 3, 3] = True
    result = score(prediction, reference, SPACING_ZYX)
    assert result.hd95_mm == pytest.approx(0.0)
    assert result.dice == pytest.approx(2 * 40 / 81)


def test_identical_masks_score_one_and_zero_millimetres():
    mask = _voxels((2, 5, 5), (2, 5, 6), (3, 5, 5))
    result = score(mask, mask, SPACING_ZYX)
    assert (result.dice, result.hd95_mm) == (1.0, 0.0)


def test_an_empty_prediction_has_dice_zero_and_no_distance():
    result = score(np.zeros((8, 12, 16), dtype=bool), _voxels((2, 5, 5)), SPACING_ZYX)
    assert result.dice == 0.0 and math.isnan(result.hd95_mm)

"""Simulated user clicks: where a user would click next to correct a slice's mask.

The next click goes to the point deepest inside (farthest from its border, the slice edge
counting as border; on a ridge of equally deep points, its middle) the largest error region of the prediction against the reference: a
positive click inside a missed region (false negative), a negative one inside a region that
should not be there (false positive). This is the click model of interactive segmentation
benchmarks (RITM, SAM's simulated-click training, nnInteractive's evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Click:
    """A click on a slice: x = column, y = row (pixel centres), positive (inside) or negative (outside)."""

    x: float
    y: float
    positive: bool

    @property
    def label(self) -> int:
        """SAM's point label: 1 inside, 0 outside."""
        return int(self.positive)


def largest_error_region(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """The largest 4-connected region of false negatives or false positives (bool [rows, columns]),
    and whether it is a false negative one; None when the prediction equals the reference.
    A tie in size goes to the false negatives."""
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    best = None
    for errors, positive in ((reference & ~prediction, True), (prediction & ~reference, False)):
        labels, count = ndimage.label(errors)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        largest = int(sizes.argmax())
        if best is None or sizes[largest] > best[2]:
            best = (labels == largest + 1, positive, int(sizes[largest]))
    return None if best is None else best[:2]


def next_click(prediction: np.ndarray, reference: np.ndarray) -> Click | None:
    """The click a user would place next on a slice (None when there is nothing to correct)."""
    found = largest_error_region(prediction, reference)
    if found is None:
        return None
    region, positive = found
    # padding with background makes the slice edge a border, so clicks are not pushed against it
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    rows, columns = np.nonzero(depth == depth.max())
    # several equally deep pixels (a ridge): the one nearest their centroid, the first in raster order among equals
    nearest = int(np.argmin((rows - rows.mean()) ** 2 + (columns - columns.mean()) ** 2))
    return Click(float(columns[nearest]), float(rows[nearest]), positive)

"""Simulated user clicks: where a user would click next to correct a slice's mask.

The next click goes to the point deepest inside (farthest from its border, the slice edge
counting as border; on a ridge of equally deep points, its middle) the largest error region of the prediction against the reference: a
positive click inside a missed region (false negative), a negative one inside a region that
should not be there (false positive). This is the click model of interactive segmentation
benchmarks (RITM, SAM's simulated-click training, nnInteractive's evaluation).

``click_threshold`` is the other side of a click: the mask threshold at which the clicked pixels,
real or simulated, get the labels the clicks give them.
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


def clicked_pixel(point: tuple[float, float], shape: tuple[int, ...]) -> tuple[int, int]:
    """The (row, column) of the pixel an (x, y) click lands on, kept inside a slice of ``shape`` (rows, columns)."""
    (x, y), (rows, columns) = point, shape[:2]
    return min(max(round(y), 0), rows - 1), min(max(round(x), 0), columns - 1)


CLICK_LOGIT_MARGIN = 0.5  # how far past a clicked pixel's logit the threshold moves
CLICK_THRESHOLD_REACH = 4.0  # at most this far (in logits) from the decoder's own threshold


def click_threshold(logits: np.ndarray, clicks: tuple[Click, ...], threshold: float) -> float:
    """The mask threshold, nearest ``threshold``, at which every click's pixel has its label.

    A decoder answers a click only in part: after a negative click on a band of over-segmentation the
    clicked pixel is often still inside. Moving the slice's threshold past the clicked pixel's logit
    (by ``CLICK_LOGIT_MARGIN``) removes it, and every pixel the decoder rates less likely, and a
    positive click adds what it rates more likely. When the clicks disagree no threshold suits them
    all, and the latest click decides. The move is at most ``CLICK_THRESHOLD_REACH``, so a click deep
    in a confident region does not empty the slice.
    """
    if not clicks:
        return threshold
    values = [(float(logits[clicked_pixel((c.x, c.y), logits.shape)]), c.positive) for c in clicks]
    low, high = _label_interval(values)
    if low >= high:  # the clicks disagree: the latest one decides
        low, high = _label_interval(values[-1:])
    moved = min(max(threshold, low), high)
    return min(max(moved, threshold - CLICK_THRESHOLD_REACH), threshold + CLICK_THRESHOLD_REACH)


def _label_interval(values: list[tuple[float, bool]]) -> tuple[float, float]:
    """The thresholds that keep every positive click's logit above and every negative one's below, with the margin."""
    low = max((value for value, positive in values if not positive), default=-np.inf) + CLICK_LOGIT_MARGIN
    high = min((value for value, positive in values if positive), default=np.inf) - CLICK_LOGIT_MARGIN
    return low, high

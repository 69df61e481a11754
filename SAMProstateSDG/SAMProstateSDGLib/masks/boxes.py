"""Box proposal: threshold the coarse probabilities, keep the largest component, take its bounding box.

Boxes are in slice pixel coordinates: x is the column, y the row, and (x0, y0, x1, y1) are the
first and last columns and rows the gland covers, widened by a margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage

from .clicks import clicked_pixel
from .component_choice import choose_component, choose_z_segment
from .confidence import PAST_THE_BOXES_PROBABILITY
from .z_smoothing import Z_SMOOTHING_MM

COARSE_THRESHOLD = 0.75
IN_PLANE = np.stack([np.zeros((3, 3)), ndimage.generate_binary_structure(2, 1), np.zeros((3, 3))]).astype(bool)  # 4-connected, never across slices


class ComponentFilter(str, Enum):
    """How the thresholded coarse mask is cleaned before boxes are taken."""

    NONE = "none"  # every foreground pixel of the slice (the unfiltered baseline)
    SLICE = "2d"  # the largest connected component of each slice (SAMMed's mask filter)
    VOLUME = "3d"  # the largest 3D connected component, then per-slice boxes
    PLAUSIBLE = "plausible"  # the most plausible 3D component (component_choice), then per-slice boxes
    PROFILE = "profile"  # the largest 3D component cut at cross-section area jumps, its most plausible z-segment (component_choice)


@dataclass(frozen=True)
class ProposalOptions:
    """How coarse probabilities become boxes (SAMMed: threshold 0.75, largest component), and SAM's box logits masks."""

    threshold: float = COARSE_THRESHOLD
    component_filter: ComponentFilter = ComponentFilter.VOLUME  # chosen on in-domain cases (README)
    margin_mm: float = 5.0  # chosen on source-extra under the robustness suite (README: "Box threshold and margin under the suite")
    z_smoothing_mm: float = Z_SMOOTHING_MM  # SAM's box logits smoothed along the slice axis (``z_smoothing``); 0: off


@dataclass(frozen=True)
class CoarseOptions:
    """Which levers shape what the coarse network reads (``localisation``); all off: the voxels as the file stores them."""

    reorient: bool = False
    n4: bool = False
    tta: bool = False
    slice_order: bool = False

    @property
    def name(self) -> str:
        return "+".join(lever for lever in ("reorient", "n4", "tta", "slice_order") if getattr(self, lever)) or "base"

    @classmethod
    def named(cls, name: str) -> CoarseOptions:
        """Options from a '+'-joined list of lever names ('base' for none), e.g. 'reorient+n4'."""
        return cls(**{lever.replace("-", "_"): True for lever in name.split("+") if lever != "base"})


DEFAULT_COARSE_OPTIONS = CoarseOptions(reorient=True, slice_order=True)  # chosen on the robustness suite (README: "Robustness to acquisition shifts")


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def clipped(self, shape: tuple[int, int]) -> Box:
        """The box cut to a slice of ``shape`` (rows, columns): edges on the first and last pixel at most."""
        height, width = shape
        return Box(max(self.x0, 0.0), max(self.y0, 0.0), min(self.x1, width - 1.0), min(self.y1, height - 1.0))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a 2D or 3D boolean mask (empty stays empty)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def largest_component_per_slice(mask: np.ndarray) -> np.ndarray:
    """Each slice's largest 4-connected component of a [slices, rows, columns] mask (ties: the first in raster order).

    All slices are labelled in one pass: components never cross slices, so each belongs to one.
    """
    labels, count = ndimage.label(mask, structure=IN_PLANE)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    # labels are numbered in raster order, so a slice's labels all exceed those of the slices before it
    last_label = np.maximum.accumulate(labels.reshape(len(labels), -1).max(axis=1))
    slice_of = np.searchsorted(last_label, np.arange(1, count + 1))
    order = np.lexsort((-np.arange(count), sizes, slice_of))  # by slice, then size, the first-labelled last
    largest = order[np.r_[slice_of[order][1:] != slice_of[order][:-1], True]]
    keep = np.zeros(count + 1, dtype=bool)
    keep[largest + 1] = True
    return np.take(keep, labels)


def slice_boxes(
    mask: np.ndarray, margin: tuple[float, float] = (0.0, 0.0), origin: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None
) -> dict[int, Box]:
    """Each slice's bounding box of a [slices, rows, columns] mask, widened by (x, y) margin pixels and
    kept inside the slice; slices without foreground get none.

    ``mask`` may be a window of larger slices of ``shape`` (rows, columns), its first pixel at
    ``origin`` (x, y) in them.
    """
    rows, columns = np.any(mask, axis=2), np.any(mask, axis=1)
    height, width = shape or mask.shape[1:]
    y0, y1 = origin[1] + rows.argmax(1), origin[1] + mask.shape[1] - 1 - rows[:, ::-1].argmax(1)
    x0, x1 = origin[0] + columns.argmax(1), origin[0] + mask.shape[2] - 1 - columns[:, ::-1].argmax(1)
    return {
        int(index): Box(
            float(max(x0[index] - margin[0], 0)),
            float(max(y0[index] - margin[1], 0)),
            float(min(x1[index] + margin[0], width - 1)),
            float(min(y1[index] + margin[1], height - 1)),
        )
        for index in np.flatnonzero(rows.any(axis=1))
    }


def foreground_window(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The index window of a [slices, rows, columns] mask's in-plane bounding box over all slices (all of it when empty)."""
    projection = np.any(mask, axis=0)
    rows, columns = np.flatnonzero(projection.any(axis=1)), np.flatnonzero(projection.any(axis=0))
    if len(rows) == 0:
        return slice(None), slice(None), slice(None)
    return slice(None), slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def filter_components(
    mask: np.ndarray, component_filter: ComponentFilter, probabilities: np.ndarray | None = None, spacing_xyz: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """The thresholded coarse mask kept to its largest (or most plausible) component(s) as ``component_filter`` says.

    PLAUSIBLE needs the probabilities (same shape as ``mask``) and the voxel spacing.
    """
    if component_filter is ComponentFilter.PLAUSIBLE:
        assert probabilities is not None, "PLAUSIBLE needs the probabilities"
        return choose_component(mask, probabilities, spacing_xyz, plausible=True)
    if component_filter is ComponentFilter.PROFILE:
        assert probabilities is not None, "PROFILE needs the probabilities"
        return choose_z_segment(largest_component(mask), probabilities, spacing_xyz)
    if component_filter is ComponentFilter.VOLUME:
        return largest_component(mask)
    if component_filter is ComponentFilter.SLICE:
        return largest_component_per_slice(mask)
    return mask


def _filtered_window(probabilities: np.ndarray, threshold: float, component_filter: ComponentFilter, spacing_xyz: tuple[float, ...] = (1.0, 1.0, 1.0)):
    """(filtered mask inside the window, the window): components are labelled only inside the
    foreground's bounding box (the gland is a small part of the slice), several times faster."""
    mask = probabilities > threshold
    window = foreground_window(mask)
    return filter_components(mask[window], component_filter, probabilities[window], spacing_xyz), window


def filtered_mask(
    probabilities: np.ndarray,
    threshold: float = COARSE_THRESHOLD,
    component_filter: ComponentFilter = ComponentFilter.SLICE,
    spacing_xyz: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """The coarse mask ([slices, rows, columns]) after thresholding and component filtering."""
    inside, window = _filtered_window(probabilities, threshold, component_filter, spacing_xyz)
    filtered = np.zeros(probabilities.shape, dtype=bool)
    filtered[window] = inside
    return filtered


def propose_boxes(probabilities: np.ndarray, spacing_xy: tuple[float, ...], options: ProposalOptions = ProposalOptions()) -> dict[int, Box]:
    """One box per slice that has a component; slices without one get none (taken inside the window).

    ``spacing_xy`` is the pixel spacing (x, y) in mm; the PLAUSIBLE filter also needs the slice spacing (x, y, z).
    """
    if options.component_filter in (ComponentFilter.PLAUSIBLE, ComponentFilter.PROFILE) and len(spacing_xy) < 3:
        raise ValueError(f"the {options.component_filter.value} component filter needs the (x, y, z) spacing")
    inside, window = _filtered_window(probabilities, options.threshold, options.component_filter, tuple(spacing_xy))
    origin = (window[2].start or 0, window[1].start or 0)
    return component_boxes(inside, spacing_xy, options.margin_mm, origin, probabilities.shape[1:])


def component_boxes(
    component: np.ndarray, spacing_xy: tuple[float, ...], margin_mm: float, origin: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None
) -> dict[int, Box]:
    """Each slice's box around a filtered coarse component (``filtered_mask``), widened by ``margin_mm``
    (``origin`` and ``shape`` as in ``slice_boxes``)."""
    return slice_boxes(component, (margin_mm / spacing_xy[0], margin_mm / spacing_xy[1]), origin, shape)


def boxes_from_labels(labels: np.ndarray) -> dict[int, Box]:
    """Tight boxes around a reference mask (the upper bound of box prompting)."""
    return slice_boxes(labels > 0)


def whole_slice_boxes(shape: tuple[int, int, int]) -> dict[int, Box]:
    """A box over the whole slice, on every slice (the prompt-free baseline)."""
    slices, height, width = shape
    return {index: Box(0.0, 0.0, float(width - 1), float(height - 1)) for index in range(slices)}


def box_from_clicks(
    box: Box | None, points: tuple[tuple[float, float], ...], labels: tuple[int, ...], shape: tuple[int, int], margin: float = 2.0
) -> Box | None:
    """Clicks turned into a box edit, for SAMs trained with box prompts only (LiteMedSAM).

    The box grows to take in each positive click and its nearest edge moves past each negative
    click inside it, ``margin`` pixels beyond the point. Without a box, two or more positive
    clicks span one; fewer give None.
    """
    positives = [point for point, label in zip(points, labels) if label == 1]
    if box is None:
        if len(positives) < 2:
            return None
        xs, ys = zip(*positives)
        box = Box(min(xs) - margin, min(ys) - margin, max(xs) + margin, max(ys) + margin)
    for x, y in positives:
        box = Box(min(box.x0, x - margin), min(box.y0, y - margin), max(box.x1, x + margin), max(box.y1, y + margin))
    for (x, y), label in zip(points, labels):
        if label == 0 and box.x0 < x < box.x1 and box.y0 < y < box.y1:
            edges = {"x0": x - box.x0, "x1": box.x1 - x, "y0": y - box.y0, "y1": box.y1 - y}
            nearest = min(edges, key=edges.__getitem__)
            moved = {"x0": x + margin, "x1": x - margin, "y0": y + margin, "y1": y - margin}[nearest]
            box = Box(**{**box.__dict__, nearest: moved})
    height, width = shape
    x0, y0 = min(max(box.x0, 0.0), width - 2), min(max(box.y0, 0.0), height - 2)
    return Box(x0, y0, min(max(box.x1, x0 + 1), width - 1.0), min(max(box.y1, y0 + 1), height - 1.0))


BORROWED_BOX_SCALE = 0.8  # chosen on the suite's gland slices without a box (README: "Click to segment")


def borrowed_box(
    boxes: dict[int, Box], index: int, points: tuple[tuple[float, float], ...], labels: tuple[int, ...], shape: tuple[int, int]
) -> Box | None:
    """A start box for clicks on a slice without one: the nearest boxed slice's box, scaled by
    ``BORROWED_BOX_SCALE`` and centred on the slice's first positive click (None without either).

    A slice just past the boxed extent holds a smaller cross-section of the same gland, so its
    neighbour's box, shrunk, prompts SAM far better than a single click does.
    """
    positives = [point for point, label in zip(points, labels) if label == 1]
    if not boxes or not positives:
        return None
    nearest = boxes[min(boxes, key=lambda boxed: (abs(boxed - index), boxed))]
    x, y = positives[0]
    half_width, half_height = BORROWED_BOX_SCALE * (nearest.x1 - nearest.x0) / 2, BORROWED_BOX_SCALE * (nearest.y1 - nearest.y0) / 2
    return Box(x - half_width, y - half_height, x + half_width, y + half_height).clipped(shape)


START_MARGIN_MM = 2.0  # the smaller of the two margins tried on the suite's gland slices without a box, equal there (README: History)


def start_box(
    boxes: dict[int, Box],
    index: int,
    points: tuple[tuple[float, float], ...],
    labels: tuple[int, ...],
    shape: tuple[int, int],
    probabilities: np.ndarray | None,
    spacing_xy: tuple[float, ...],
) -> Box | None:
    """A start box for clicks on a slice without one (None without a positive click).

    Where the coarse network's ``probabilities`` on the slice exceed ``PAST_THE_BOXES_PROBABILITY``
    at the first positive click (the gland may go on there, as the flags say), the box of that
    connected region grown by ``START_MARGIN_MM``: the network's own evidence on this slice, below
    the proposals' threshold. Otherwise the nearest box, shrunk around the click (``borrowed_box``).
    """
    positives = [point for point, label in zip(points, labels) if label == 1]
    if probabilities is not None and positives:
        regions, _ = ndimage.label(probabilities > PAST_THE_BOXES_PROBABILITY)
        region = regions[clicked_pixel(positives[0], shape)]
        if region:
            return component_boxes((regions == region)[None], spacing_xy, START_MARGIN_MM)[0]
    return borrowed_box(boxes, index, points, labels, shape)

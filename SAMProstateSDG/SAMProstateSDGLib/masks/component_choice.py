"""Choosing the coarse mask's 3D component to prompt SAM with: by plausibility, not size alone.

Under an acquisition shift the coarse network may also fire on the bladder or seminal vesicles,
and that region can be larger than the part of the gland it finds. A gland is a compact
structure whose cross-sections change little from slice to slice, of 10-200 mL (the coarse
mask may hold only part of it), on which the network is confident: the component with the
largest probability mass times slice continuity, among those of plausible volume, is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PLAUSIBLE_VOLUME_ML = (2.0, 200.0)  # coarse components outside this range are not a gland (a coarse mask may hold half a small gland)
AREA_JUMP = 2.5  # consecutive cross-sections whose areas differ more than this factor belong to different structures ...
JUMP_FLOOR = 0.5  # ... when the larger one is at least this share of the component's median cross-section (apex and base taper)


@dataclass(frozen=True)
class ComponentFeatures:
    volume_ml: float
    mass: float  # sum of the probabilities inside it (voxels × mean probability, in mL)
    slices: int
    continuity: float  # mean in-plane overlap (IoU) of consecutive slices' cross-sections


def component_features(component: np.ndarray, probabilities: np.ndarray, spacing_xyz: tuple[float, ...]) -> ComponentFeatures:
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    present = np.flatnonzero(component.reshape(len(component), -1).any(axis=1))
    overlaps = [
        (component[a] & component[b]).sum() / max((component[a] | component[b]).sum(), 1) for a, b in zip(present[:-1], present[1:])
    ]
    return ComponentFeatures(
        volume_ml=float(component.sum()) * voxel_ml,
        mass=float(probabilities[component].sum()) * voxel_ml,
        slices=len(present),
        continuity=float(np.mean(overlaps)) if overlaps else 0.0,
    )


def plausibility(features: ComponentFeatures) -> float:
    """Probability mass × slice continuity, zero outside the plausible volume range or on one slice."""
    low, high = PLAUSIBLE_VOLUME_ML
    if not low <= features.volume_ml <= high or features.slices < 2:
        return 0.0
    return features.mass * features.continuity


def choose_component(mask: np.ndarray, probabilities: np.ndarray, spacing_xyz: tuple[float, ...], plausible: bool) -> np.ndarray:
    """The 3D component of ``mask`` to prompt with: the largest, or the most plausible (the largest when none is)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    best = int(sizes.argmax())
    if plausible and count > 1:
        scores = [plausibility(component_features(labels == index, probabilities, spacing_xyz)) for index in range(1, count + 1)]
        if max(scores) > 0:
            best = int(np.argmax(scores)) + 1
    return labels == best


def z_segments(component: np.ndarray) -> list[np.ndarray]:
    """The component cut between consecutive slices whose cross-section areas jump (``AREA_JUMP``) at gland size (``JUMP_FLOOR``)."""
    areas = component.reshape(len(component), -1).sum(axis=1)
    present = np.flatnonzero(areas)
    if len(present) < 2:
        return [component]
    floor = JUMP_FLOOR * float(np.median(areas[present]))
    starts = [present[0]]
    for below, above in zip(present[:-1], present[1:]):
        small, large = sorted((areas[below], areas[above]))
        if above != below + 1 or (large >= floor and large > AREA_JUMP * max(small, 1)):
            starts.append(above)
    bounds = [*starts, present[-1] + 1]
    segments = []
    for first, stop in zip(bounds[:-1], bounds[1:]):
        segment = np.zeros_like(component)
        segment[first:stop] = component[first:stop]
        segments.append(segment)
    return segments


def choose_z_segment(component: np.ndarray, probabilities: np.ndarray, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """The most plausible z-segment of a component (``z_segments``): a gland's cross-section grows and shrinks
    smoothly from apex to base, so an abrupt jump to a much larger region (the bladder side under a coil field)
    starts another structure. A segment reaching the volume's first or last slice (cut off by the field of view, as
    the bladder side often is) is chosen only when no other segment is plausible; when none is, the component stays whole."""
    segments = z_segments(component)
    if len(segments) == 1:
        return component
    scores = []
    for segment in segments:
        present = np.flatnonzero(segment.reshape(len(segment), -1).any(axis=1))
        truncated = present[0] == 0 or present[-1] == len(segment) - 1
        scores.append(0.0 if truncated else plausibility(component_features(segment, probabilities, spacing_xyz)))
    return segments[int(np.argmax(scores))] if max(scores) > 0 else component

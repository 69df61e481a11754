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


@dataclass(frozen=True)
class ComponentFeatures:
    volume_ml: float
    mass: float  # sum of the probabilities inside it (voxels × mean probability, in mL)
    slices: int
    continuity: float  # mean in-plane overlap (IoU) of consecutive slices' cross-sections


def component_features(component: np.ndarray, probabilities: np.ndarray, spacing_xyz: tuple[float, float, float]) -> ComponentFeatures:
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


def choose_component(mask: np.ndarray, probabilities: np.ndarray, spacing_xyz: tuple[float, float, float], plausible: bool) -> np.ndarray:
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

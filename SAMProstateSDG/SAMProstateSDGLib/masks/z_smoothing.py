"""SAM's box logits smoothed along the slice axis: a gland's cross-section changes little over a few millimetres.

SAM decodes each boxed slice on its own, so neighbouring masks can disagree more than the anatomy does. A box-decoded
slice's mask is the threshold of the Gaussian-weighted mean (``Z_SMOOTHING_MM`` along the slice axis, slices within two
of it) of its logits and those of the neighbouring box-decoded slices, each capped at ±``LOGIT_CAP`` first, so that a
neighbour moves a slice's uncertain boundary but cannot overrule where the slice is sure (a box misplaced on one slice
costs its neighbours little); a slice without such neighbours keeps its own mask. Chosen on the source-extra cases
under the robustness suite, checked on the unseen ones (README, "What the levers do", SAM's logits smoothed along
the slices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

Z_SMOOTHING_MM = 1.75  # the Gaussian's sigma along the slice axis; 0 turns the smoothing off
LOGIT_CAP = 4.0  # each slice's logits are clipped to ±this (probability 0.018-0.982) before they are averaged
NO_SMOOTHING: Mapping[int, float] = MappingProxyType({0: 1.0})  # each slice its own logits


def neighbour_weights(slice_spacing_mm: float, sigma_mm: float = Z_SMOOTHING_MM) -> dict[int, float]:
    """The weight of the slice ``offset`` slices away, for every offset within two sigmas (offset 0 weighs 1)."""
    reach = int(2 * sigma_mm // slice_spacing_mm) if sigma_mm > 0 and slice_spacing_mm > 0 else 0
    return {offset: math.exp(-((offset * slice_spacing_mm) ** 2) / (2 * sigma_mm**2)) if offset else 1.0 for offset in range(-reach, reach + 1)}


def smoothed_logits(logits: Mapping[int, np.ndarray], index: int, weights: Mapping[int, float], cap: float = LOGIT_CAP) -> np.ndarray:
    """The weighted mean of slice ``index``'s logits and those of its neighbours among ``logits``' slices, each capped
    at ±``cap`` (its sign, and so a lone slice's mask, unchanged)."""
    total, weight_sum = np.zeros_like(logits[index], dtype=np.float32), 0.0
    for offset, weight in weights.items():
        if index + offset in logits:
            total += weight * np.clip(logits[index + offset], -cap, cap)
            weight_sum += weight
    return total / weight_sum


def affected_slices(changed: set[int], weights: Mapping[int, float]) -> set[int]:
    """The slices whose smoothed logits read any of the ``changed`` slices."""
    return {index + offset for index in changed for offset in weights}

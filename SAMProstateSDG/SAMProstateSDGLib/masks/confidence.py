"""Per-slice confidence of a segmentation: where the clinician should look first.

A segmented slice is flagged when SAM's own predicted IoU of its mask is low (box-prompted methods),
when the mask and the coarse network's component disagree on that slice, or when the mask is a
small cross-section of the gland (under a fifth of the volume's largest: apex and base, where a few
pixels decide the Dice). A slice next to either end of the segmented extent is flagged when the
coarse network still gives gland a probability above ``PAST_THE_BOXES_PROBABILITY`` there: the
gland may go on. For a box-prompted method the segmented slices are the boxed ones; for a method
that prompts itself, those where its mask or the coarse component has gland. Thresholds chosen on
the source-extra cases of the robustness suite, checked on the unseen ones
(``scripts/suite_study.py``; README, "Where to look: per-slice confidence").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREDICTED_IOU_FLAG = 0.80  # flag a slice when SAM's predicted IoU is below this
AGREEMENT_FLAG = 0.80  # ... or when SAM's mask and the coarse component agree less than this (Dice)
RELATIVE_AREA_FLAG = 0.20  # ... or when its mask is smaller than this share of the volume's largest mask
PAST_THE_BOXES_PROBABILITY = 0.30  # a slice just past the boxes is flagged when the coarse probability exceeds this


@dataclass(frozen=True)
class SliceConfidence:
    """A segmented slice's figures (no predicted IoU when the method has none); a slice just past the segmented
    extent has only its coarse probability."""

    predicted_iou: float | None = None
    coarse_agreement: float | None = None
    relative_area: float | None = None  # the slice's mask area over the largest mask area of the volume
    coarse_probability: float | None = None  # the highest coarse probability of a slice just past the segmented extent

    @property
    def segmented(self) -> bool:
        return self.coarse_agreement is not None

    @property
    def flagged(self) -> bool:
        iou, agreement, area = self.predicted_iou, self.coarse_agreement, self.relative_area
        if agreement is None or area is None:
            return (self.coarse_probability or 0.0) > PAST_THE_BOXES_PROBABILITY
        return (iou is not None and iou < PREDICTED_IOU_FLAG) or agreement < AGREEMENT_FLAG or area < RELATIVE_AREA_FLAG

    def describe(self) -> str:
        """What the figures say, for a tooltip or a list."""
        if not self.segmented:
            return f"not segmented, but the coarse network sees gland here (probability {self.coarse_probability:.2f}): the gland may go on"
        iou = "" if self.predicted_iou is None else f"SAM's predicted IoU {self.predicted_iou:.2f}, "
        return f"{iou}agreement with the coarse mask {self.coarse_agreement:.2f}, cross-section {self.relative_area:.0%} of the largest"

    def to_json(self) -> dict:
        figures = {name: round(value, 4) for name, value in vars(self).items() if value is not None}
        return {**figures, "flagged": self.flagged}


def mask_dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice of two 2D masks; 1.0 when both are empty."""
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int((first & second).sum()) / total


def slice_confidences(
    mask: np.ndarray, coarse_component: np.ndarray, coarse_probabilities: np.ndarray, predicted_iou: dict[int, float] | None = None
) -> dict[int, SliceConfidence]:
    """The confidence of each segmented slice and of the slices just past either end of them; masks and probabilities
    [slices, rows, columns]. The segmented slices: those SAM decoded in a box (the keys of its ``predicted_iou``), or
    without ``predicted_iou`` (a method that prompts itself) those where ``mask`` or ``coarse_component`` has gland."""
    areas = mask.reshape(len(mask), -1).sum(axis=1)
    largest = max(int(areas.max()), 1) if len(areas) else 1
    if predicted_iou is None:
        has_gland = (mask | coarse_component).reshape(len(mask), -1).any(axis=1)
        scores: dict[int, float | None] = {int(index): None for index in np.flatnonzero(has_gland)}
    else:
        scores = dict(predicted_iou)
    confidences = {
        index: SliceConfidence(
            None if score is None else float(score), mask_dice(mask[index], coarse_component[index]), float(areas[index]) / largest
        )
        for index, score in sorted(scores.items())
    }
    if confidences:
        for index in (min(confidences) - 1, max(confidences) + 1):
            if 0 <= index < len(mask) and index not in confidences:
                confidences[index] = SliceConfidence(coarse_probability=float(coarse_probabilities[index].max()))
    return dict(sorted(confidences.items()))


def flagged_slices(confidences: dict[int, SliceConfidence]) -> list[int]:
    return [index for index, confidence in confidences.items() if confidence.flagged]

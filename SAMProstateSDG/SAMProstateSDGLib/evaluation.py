"""Whole-gland Dice and HD95 per case for each way of prompting SAM (SAMMed's Table 3 on our data)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from tqdm import tqdm

from .boxes import COARSE_THRESHOLD, ComponentFilter, ProposalOptions, boxes_from_labels, whole_slice_boxes
from .dataset import Case
from .pipeline import PreparedVolume, ProstateSegmenter


@dataclass(frozen=True)
class Score:
    dice: float
    hd95_mm: float  # nan when the prediction or the reference is empty


def _batch(mask: np.ndarray) -> torch.Tensor:
    """A mask (label > 0) as MONAI's [batch, channel, ...] float tensor."""
    return torch.from_numpy(mask > 0)[None, None].float()


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two masks (label > 0); 1.0 when both are empty."""
    return compute_dice(_batch(prediction), _batch(reference), include_background=True, ignore_empty=False).item()


def score(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> Score:
    dice = dice_score(prediction, reference)
    if not prediction.any() or not reference.any():
        return Score(dice, math.nan)
    with warnings.catch_warnings():  # MONAI warns about an argument it passes to itself
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(_batch(prediction), _batch(reference), include_background=True, percentile=95, spacing=spacing_zyx)
    return Score(dice, hd95.item())


def _rows(options: ProposalOptions) -> dict[str, Callable[[ProstateSegmenter, PreparedVolume, np.ndarray], np.ndarray]]:
    def with_filter(component_filter: ComponentFilter):
        variant = ProposalOptions(options.threshold, component_filter, options.margin_mm)
        return lambda segmenter, volume, _: segmenter.segment_with_boxes(volume, segmenter.propose_boxes(volume, variant))

    return {
        f"Coarse net alone (p > {COARSE_THRESHOLD})": lambda segmenter, volume, _: (
            segmenter.coarse_probabilities(volume) > options.threshold
        ).astype(np.uint8),
        "SAM + coarse boxes, unfiltered": with_filter(ComponentFilter.NONE),
        "SAM + filtered boxes, largest component per slice (SAMMed)": with_filter(ComponentFilter.SLICE),
        "SAM + filtered boxes, largest 3D component (ours, default)": with_filter(ComponentFilter.VOLUME),
        "SAM + ground-truth boxes (upper bound)": lambda segmenter, volume, reference: segmenter.segment_with_boxes(
            volume, boxes_from_labels(reference)
        ),
        "SAM + whole-image box, every slice": lambda segmenter, volume, _: segmenter.segment_with_boxes(
            volume, whole_slice_boxes(volume.normalised.shape)
        ),
    }


def _fine_tuned_rows(variants: dict[str, ProstateSegmenter]):
    """One row per fine-tuned decoder, prompted with the default proposed boxes."""
    return {
        f"{name} + filtered boxes, largest 3D component": lambda segmenter, volume, _, variant=variant: variant.segment_with_boxes(
            volume, segmenter.propose_boxes(volume)
        )
        for name, variant in variants.items()
    }


def evaluate(
    segmenter: ProstateSegmenter, cases: list[Case], variants: dict[str, ProstateSegmenter] | None = None
) -> dict[str, dict[str, Score]]:
    """Scores by row, then by case; each slice is encoded once and shared by all rows.

    ``variants`` are segmenters with fine-tuned decoders that share ``segmenter``'s encoder.
    """
    results: dict[str, dict[str, Score]] = {}
    rows = _rows(segmenter.options) | _fine_tuned_rows(variants or {})
    for case in tqdm(cases, desc="cases"):
        image, labels = case.read()
        reference = labels > 0
        volume = segmenter.prepare(image)
        spacing_zyx = tuple(reversed(image.GetSpacing()))
        for row, predict in rows.items():
            results.setdefault(row, {})[case.name] = score(predict(segmenter, volume, reference), reference, spacing_zyx)
    return results


def markdown_table(results: dict[str, dict[str, Score]]) -> str:
    cases = list(next(iter(results.values())))
    header = "| Method | " + " | ".join(f"{case} Dice / HD95" for case in cases) + " | Mean Dice | Mean HD95 (mm) |"
    lines = [header, "|---" * (len(cases) + 3) + "|"]
    for row, scores in results.items():
        cells = [f"{scores[case].dice:.3f} / {_millimetres(scores[case].hd95_mm)}" for case in cases]
        distances = [scores[case].hd95_mm for case in cases if not math.isnan(scores[case].hd95_mm)]
        mean_dice = np.mean([scores[case].dice for case in cases])
        mean_distance = _millimetres(float(np.mean(distances))) if distances else "n/a"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | **{mean_dice:.3f}** | {mean_distance} |")
    return "\n".join(lines)


def _millimetres(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"

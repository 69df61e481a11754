"""Dice and HD95 per case for each way of prompting SAM (SAMMed's Table 3 on our data) and each trained method."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from tqdm import tqdm

from ..core.catalog import DEFAULT_GRID_SIDE, METHOD_TITLES, METHODS, catalog
from ..core.labels import ZONE_NAMES
from ..io.dataset import Case
from ..masks.boxes import COARSE_THRESHOLD, ComponentFilter, ProposalOptions, boxes_from_labels, whole_slice_boxes
from ..pipeline.segmenter import PreparedVolume, ProstateSegmenter


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


Predictor = Callable[[PreparedVolume, np.ndarray], np.ndarray]  # (volume, reference labels) -> predicted labels
DESAM_GRID_SIDES = (1, 3, 5, DEFAULT_GRID_SIDE)  # 1, 9, 25 and 81 points


@dataclass(frozen=True)
class Row:
    """One table row: a prediction scored on the whole gland (label > 0) or on one zone label."""

    title: str
    prediction: str
    zone: int | None = None


def _zero_shot_predictors(segmenter: ProstateSegmenter) -> dict[str, Predictor]:
    options = segmenter.options

    def with_filter(component_filter: ComponentFilter) -> Predictor:
        variant = ProposalOptions(options.threshold, component_filter, options.margin_mm)
        return lambda volume, _: segmenter.segment_with_boxes(volume, segmenter.propose_boxes(volume, variant))

    return {
        f"Coarse net alone (p > {COARSE_THRESHOLD})": lambda volume, _: (segmenter.coarse_probabilities(volume) > options.threshold).astype(np.uint8),
        "SAM + coarse boxes, unfiltered": with_filter(ComponentFilter.NONE),
        "SAM + filtered boxes, largest component per slice (SAMMed)": with_filter(ComponentFilter.SLICE),
        "SAM + filtered boxes, largest 3D component (ours, default)": with_filter(ComponentFilter.VOLUME),
        "SAM + ground-truth boxes (upper bound)": lambda volume, labels: segmenter.segment_with_boxes(volume, boxes_from_labels(labels > 0)),
        "SAM + whole-image box, every slice": lambda volume, _: segmenter.segment_with_boxes(volume, whole_slice_boxes(volume.normalised.shape)),
    }


def _trained_predictors(segmenter: ProstateSegmenter) -> dict[str, Predictor]:
    """One prediction per shipped trained method (DeSAM grid at several grid sizes); none that is not shipped."""
    shipped = {method for method, model in METHODS.items() if model in catalog()}
    predictors: dict[str, Predictor] = {}
    if "sammed" in shipped:
        sammed = segmenter.with_method("sammed")
        predictors[f"{METHOD_TITLES['sammed']} + filtered boxes"] = lambda volume, _: sammed.segment_with_boxes(volume, segmenter.propose_boxes(volume))
    if "desam-grid" in shipped:
        for side in DESAM_GRID_SIDES:
            variant = segmenter.with_method("desam-grid", side)
            predictors[f"{METHOD_TITLES['desam-grid']}: {side * side} point{'s' * (side > 1)}"] = lambda volume, _, v=variant: v.segment_automatically(volume)
    for method in ("desam-box", "samed"):
        if method in shipped:
            variant = segmenter.with_method(method)
            predictors[METHOD_TITLES[method]] = lambda volume, _, v=variant: v.segment_automatically(volume)
    return predictors


def _rows(predictions: dict[str, Predictor]) -> list[Row]:
    rows = [Row(name, name) for name in predictions]
    samed = METHOD_TITLES["samed"]
    if samed in predictions:
        rows += [Row(f"{samed}: {name} (label {label})", samed, label) for label, name in ZONE_NAMES.items()]
    return rows


def evaluate(segmenter: ProstateSegmenter, cases: list[Case], trained: bool = True) -> dict[str, dict[str, Score]]:
    """Scores by row, then by case; each slice is encoded once and shared by all rows.

    ``trained`` adds rows for the shipped trained methods (they build on the shipped LiteMedSAM).
    """
    predictors = _zero_shot_predictors(segmenter) | (_trained_predictors(segmenter) if trained else {})
    rows = _rows(predictors)
    results: dict[str, dict[str, Score]] = {}
    for case in tqdm(cases, desc="cases"):
        image, labels = case.read()
        volume = segmenter.prepare(image)
        spacing_zyx = tuple(reversed(image.GetSpacing()))
        predictions = {name: predict(volume, labels) for name, predict in predictors.items()}
        for row in rows:
            prediction = predictions[row.prediction]
            if row.zone is None:
                results.setdefault(row.title, {})[case.name] = score(prediction > 0, labels > 0, spacing_zyx)
            else:
                results.setdefault(row.title, {})[case.name] = score(prediction == row.zone, labels == row.zone, spacing_zyx)
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

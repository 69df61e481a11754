"""Dice and HD95 per case: each method's rows (SAM zero-shot's box-prompt ablation is SAMMed's Table 3 on our data)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from ..core.catalog import CatalogEntry
from ..core.labels import ZONE_NAMES
from ..io.dataset import Case
from ..masks.metrics import Score, score
from ..methods.registry import Method, Predictor
from ..pipeline.segmenter import ProstateSegmenter


@dataclass(frozen=True)
class Row:
    """One table row: a prediction scored on the whole gland (label > 0) or on one zone label."""

    title: str
    prediction: str
    zone: int | None = None


def _rows(predictors: dict[str, Predictor], zonal: set[str]) -> list[Row]:
    """A row per prediction, then a row per zone of each zonal method's predictions."""
    rows = [Row(name, name) for name in predictors]
    for name in predictors:
        if name in zonal:
            rows += [Row(f"{name}: {zone} (label {label})", name, label) for label, zone in ZONE_NAMES.items()]
    return rows


def evaluate(segmenter: ProstateSegmenter, cases: list[Case], chosen: Iterable[Method], model: CatalogEntry | None = None) -> dict[str, dict[str, Score]]:
    """Scores by row, then by case: the rows of each chosen method, with ``model`` for the method of its kind and the
    shipped models for the others (a method whose model is neither given nor installed is left out); each slice is
    encoded once and shared by all rows."""
    predictors: dict[str, Predictor] = {}
    zonal: set[str] = set()
    for method in chosen:
        own = model if model is not None and method.model_kind == model.kind else None
        if method.model_kind is None or own is not None or method.shipped_model() is not None:
            method_rows = method.evaluation_rows(segmenter, own)
            predictors |= method_rows
            zonal |= set(method_rows) if method.zonal else set()
    rows = _rows(predictors, zonal)
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


def to_json(results: dict[str, dict[str, Score]]) -> dict:
    """The scores as ``evaluate --output NAME.md`` writes them to NAME.json (HD95 null where a mask is empty)."""
    return {"format": "samprostate-evaluation", "version": 1, "scores": {row: {case: asdict(value) for case, value in cases.items()} for row, cases in results.items()}}


def from_json(data: dict) -> dict[str, dict[str, Score]]:
    """The scores ``to_json`` wrote (an HD95 written as null, for an empty mask, read back as NaN)."""
    return {
        row: {case: Score(value["dice"], math.nan if value["hd95_mm"] is None else value["hd95_mm"]) for case, value in cases.items()}
        for row, cases in data["scores"].items()
    }


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

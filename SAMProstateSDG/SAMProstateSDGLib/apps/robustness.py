"""The robustness suite: Dice and HD95 under seeded acquisition shifts, and how well the confidence flags catch bad slices.

Every case is scored clean and under each shift of ``acquisition_shifts.SHIFTS``; SAM encodes
each slice once per shifted volume and all rows share the embeddings. The method's row (as
``segment`` runs it) also records each slice's confidence, so the flags can be measured: of the slices with Dice below
``LOW_DICE``, the share flagged, and the share of all slices flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from ..core.errors import InputError
from ..io.dataset import Case
from ..masks.boxes import boxes_from_labels
from ..masks.confidence import SliceConfidence, mask_dice
from ..masks.metrics import Score, score
from ..methods.registry import MethodSegmenter
from ..pipeline.segmenter import PreparedVolume
from .acquisition_shifts import SHIFTS, AcquisitionShift, shifted_case

CLEAN = "clean"
LOW_DICE = 0.8  # a slice below this needs the clinician's attention

# (volume, reference labels) -> (labels, per-slice confidence or None)
SuitePredictor = Callable[[PreparedVolume, np.ndarray], tuple[np.ndarray, dict[int, SliceConfidence] | None]]


@dataclass(frozen=True)
class SliceRecord:
    row: str
    case: str
    shift: str
    slice: int
    dice: float
    predicted_iou: float | None
    coarse_agreement: float | None
    relative_area: float | None
    flagged: bool


@dataclass
class SuiteResult:
    seed: int
    shifts: list[AcquisitionShift]
    scores: dict[str, dict[str, dict[str, Score]]]  # row -> shift -> case -> score
    slices: list[SliceRecord]
    method_row: str  # the row of the method as ``segment`` runs it (its confidences are the flags)

    def flag_summary(self, row: str | None = None) -> dict[str, float | int]:
        """Of the row's (default: the method's) slices with Dice < LOW_DICE, the share flagged; and the share of all its slices flagged."""
        records = [record for record in self.slices if record.row == (row or self.method_row)]
        low = [record for record in records if record.dice < LOW_DICE]
        return {
            "slices": len(records),
            "low_dice_slices": len(low),
            "low_dice_flagged_share": float(np.mean([record.flagged for record in low])) if low else math.nan,
            "flagged_share": float(np.mean([record.flagged for record in records])) if records else math.nan,
        }

    def to_json(self) -> dict:
        return {
            "format": "samprostate-robustness",
            "version": 1,
            "seed": self.seed,
            "low_dice": LOW_DICE,
            "shifts": {shift.name: shift.description for shift in self.shifts},
            "scores": {
                row: {shift: {case: asdict(value) for case, value in cases.items()} for shift, cases in shifts.items()}
                for row, shifts in self.scores.items()
            },
            "flags": {row: self.flag_summary(row) for row in self.scores if any(record.row == row for record in self.slices)},
            "slices": [asdict(record) for record in self.slices],
        }


def method_row(segmenter: MethodSegmenter) -> str:
    return f"{segmenter.method.title}, as segment runs it"


def default_predictors(segmenter: MethodSegmenter) -> dict[str, SuitePredictor]:
    """The coarse network alone, the method as ``segment`` runs it (with confidence), and for a box-prompted
    method the base SAM with ground-truth boxes."""
    base = segmenter.base
    options = base.options

    def segmented(volume: PreparedVolume, _labels: np.ndarray):
        result = segmenter.segment(volume)
        return result.labels, result.confidences

    predictors: dict[str, SuitePredictor] = {
        f"Coarse net alone (p > {options.threshold})": lambda volume, _: ((base.coarse_probabilities(volume) > options.threshold).astype(np.uint8), None),
        method_row(segmenter): segmented,
    }
    if segmenter.method.takes_boxes:
        predictors["SAM + ground-truth boxes (upper bound)"] = lambda volume, labels: (base.segment_with_boxes(volume, boxes_from_labels(labels > 0)), None)
    return predictors


def slice_records(row: str, case: str, shift: str, prediction: np.ndarray, reference: np.ndarray, confidences: dict[int, SliceConfidence]) -> list[SliceRecord]:
    """One record per slice that has gland in the reference or the prediction, or is flagged (a flagged slice without
    gland counts among all slices); slices with gland but no confidence count as not flagged."""
    records = []
    counted = (prediction | reference).reshape(len(reference), -1).any(axis=1)
    counted[[index for index, confidence in confidences.items() if confidence.flagged]] = True
    for index in np.flatnonzero(counted):
        confidence = confidences.get(int(index))
        records.append(
            SliceRecord(
                row,
                case,
                shift,
                int(index),
                mask_dice(prediction[index], reference[index]),
                None if confidence is None else confidence.predicted_iou,
                None if confidence is None else confidence.coarse_agreement,
                None if confidence is None else confidence.relative_area,
                False if confidence is None else confidence.flagged,
            )
        )
    return records


def run_suite(
    segmenter: MethodSegmenter,
    cases: list[Case],
    seed: int = 0,
    shifts: tuple[AcquisitionShift, ...] = SHIFTS,
    predictors: dict[str, SuitePredictor] | None = None,
) -> SuiteResult:
    """Every case clean and under each shift, scored by each predictor (the default ones unless given)."""
    volumes = {case.name: case.read() for case in cases}  # read once, all before minutes of work
    without_gland = [name for name, (_, labels) in volumes.items() if not labels.any()]
    if without_gland:  # the coil and z-coverage shifts are placed by the gland
        raise InputError(f"the robustness suite needs gland in every reference mask; empty in {', '.join(without_gland)}")
    predictors = predictors or default_predictors(segmenter)
    result = SuiteResult(seed, list(shifts), {row: {} for row in predictors}, [], method_row(segmenter))
    for case in tqdm(cases, desc="cases"):
        image, labels = volumes[case.name]
        for shift in (None, *shifts):
            name = CLEAN if shift is None else shift.name
            shifted, reference = (image, labels) if shift is None else shifted_case(shift, image, labels, seed, case.name)
            volume = segmenter.base.prepare(shifted)
            spacing_zyx = tuple(reversed(shifted.GetSpacing()))
            for row, predict in predictors.items():
                prediction, confidences = predict(volume, reference)
                result.scores[row].setdefault(name, {})[case.name] = score(prediction > 0, reference > 0, spacing_zyx)
                if confidences is not None:
                    result.slices += slice_records(row, case.name, name, prediction > 0, reference > 0, confidences)
    return result


def markdown_table(result: SuiteResult, flag_row: str | None = None) -> str:
    """One line per shift; per row the mean Dice, the worst case's Dice and the mean HD95 (mm)."""
    rows = list(result.scores)
    header = "| Shift | " + " | ".join(f"{row}: mean Dice (worst) / HD95" for row in rows) + " |"
    lines = [header, "|---" * (len(rows) + 1) + "|"]
    for shift in [CLEAN, *(shift.name for shift in result.shifts)]:
        cells = []
        for row in rows:
            scores = list(result.scores[row].get(shift, {}).values())
            if not scores:
                cells.append("n/a")
                continue
            dices = [value.dice for value in scores]
            distances = [value.hd95_mm for value in scores if not math.isnan(value.hd95_mm)]
            distance = f"{np.mean(distances):.1f}" if distances else "n/a"
            cells.append(f"**{np.mean(dices):.3f}** ({min(dices):.3f}) / {distance}")
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    flag_row = flag_row or result.method_row
    flags = result.flag_summary(flag_row)
    lines.append("")
    lines.append(
        f"Confidence flags ({flag_row}): {flags['low_dice_flagged_share']:.0%} of the {flags['low_dice_slices']} slices with "
        f"Dice < {LOW_DICE} flagged; {flags['flagged_share']:.0%} of all {flags['slices']} slices flagged. Seed {result.seed}."
    )
    return "\n".join(lines)

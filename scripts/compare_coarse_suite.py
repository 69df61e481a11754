"""Two coarse networks through the robustness suite with the same SAM (each shifted slice encoded once for both).

Usage: python scripts/compare_coarse_suite.py --data ../shared/data/prostate \
           --candidate dg=runs/coarse-dg/coarse.pt [--candidate ...] [--levers "header order=reorient" ...] \
           [--shift "endorectal coil" ...] [--cases Case29,P158-021] --json runs/compare.json

Rows, each the shipped default method (the default coarse levers, largest 3D component, the default box margin,
LiteMedSAM) with one coarse network: ``shipped`` (the catalog's), each candidate (by its label) and the shipped
network with other coarse levers (``--levers LABEL=NAMES``, as ``CoarseOptions.named``); ``--upper-bound`` adds SAM
with ground-truth boxes. Shifts and seed are the suite's (``samprostate evaluate --shifts``); the
JSON (row -> shift -> case -> Dice, HD95) is rewritten after every case, so a partial run is usable.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from SAMProstateSDGLib.apps.acquisition_shifts import SHIFTS, select_shifts
from SAMProstateSDGLib.apps.evaluation_options import SUITE_SPLITS
from SAMProstateSDGLib.apps.robustness import run_suite
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import CoarseOptions, boxes_from_labels, propose_boxes
from SAMProstateSDGLib.methods.registry import DEFAULT_METHOD, method
from SAMProstateSDGLib.pipeline.localisation import coarse_probabilities
from SAMProstateSDGLib.pipeline.segmenter import PreparedVolume, ProstateSegmenter


def default_method_with(segmenter: ProstateSegmenter, coarse_options: CoarseOptions | None = None):
    """The default method's labels with this segmenter's coarse network and its levers, or ``coarse_options``
    (not the volume's cached probabilities)."""
    options = coarse_options or segmenter.coarse_options

    def predict(volume: PreparedVolume, _labels: np.ndarray):
        probabilities = coarse_probabilities(segmenter.coarse, volume.image, options, volume.normalised)
        return segmenter.box_session(volume, propose_boxes(probabilities, volume.image.GetSpacing(), segmenter.options)).labels, None

    return predict


def table(scores: dict) -> str:
    rows = list(scores)
    lines = ["| Shift | " + " | ".join(f"{row}: mean Dice (worst) / HD95 mm" for row in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for shift in scores[rows[0]]:
        cells = []
        for row in rows:
            values = list(scores[row].get(shift, {}).values())
            distances = [value["hd95_mm"] for value in values if not math.isnan(value["hd95_mm"])]
            dice = [value["dice"] for value in values]
            cells.append(f"**{np.mean(dice):.3f}** ({min(dice):.3f}) / {np.mean(distances):.1f}" if dice else "n/a")
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--candidate", action="append", default=[], help="LABEL=PATH: a coarse checkpoint to compare with the shipped one (repeatable)")
    parser.add_argument("--levers", action="append", default=[], help="LABEL=NAMES: the shipped network with these coarse levers, e.g. 'header order=reorient' (repeatable)")
    parser.add_argument("--shift", action="append", help="only this suite shift (name or its start; repeatable; default: all)")
    parser.add_argument("--cases", help="only these cases, comma-separated (default: the suite's 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upper-bound", action="store_true", help="also SAM with ground-truth boxes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    shifts = select_shifts(arguments.shift) if arguments.shift else SHIFTS
    cases = [case for split in SUITE_SPLITS for case in find_cases(arguments.data, split=split)]
    if arguments.cases:
        cases = [case for case in cases if case.name in arguments.cases.split(",")]
    shipped = ProstateSegmenter.load(device="cpu")  # the default encoder backend, as evaluate --shifts
    candidates = dict(item.split("=", 1) for item in arguments.candidate)
    predictors = {"shipped": default_method_with(shipped)}
    predictors.update({label: default_method_with(shipped.with_coarse(path)) for label, path in candidates.items()})
    levers = dict(item.split("=", 1) for item in arguments.levers)
    if len({"shipped", *candidates, *levers}) != 1 + len(arguments.candidate) + len(arguments.levers):
        parser.error("every --candidate and --levers label must be new (and not 'shipped')")
    predictors.update({label: default_method_with(shipped, CoarseOptions.named(names)) for label, names in levers.items()})
    if arguments.upper_bound:
        predictors["SAM + ground-truth boxes"] = lambda volume, labels: (shipped.segment_with_boxes(volume, boxes_from_labels(labels > 0)), None)
    scores: dict = {row: {} for row in predictors}
    for case in cases:
        started = time.time()
        result = run_suite(method(DEFAULT_METHOD).load(shipped), [case], arguments.seed, shifts, predictors)
        for row, by_shift in result.scores.items():
            for shift, by_case in by_shift.items():
                scores[row].setdefault(shift, {}).update({name: asdict(value) for name, value in by_case.items()})
        arguments.json.write_text(json.dumps({"candidates": candidates, "levers": levers, "seed": arguments.seed, "scores": scores}, indent=1) + "\n")
        summary = ", ".join(f"{row} {by_shift[shift][case.name]['dice']:.3f}" for row, by_shift in scores.items() for shift in list(by_shift)[:1])
        print(f"{case.name} done in {time.time() - started:.0f} s (clean: {summary})", flush=True)
    print(table(scores))


if __name__ == "__main__":
    main()

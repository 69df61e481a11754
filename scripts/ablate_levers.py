"""Ablation of the inference-time levers on the robustness suite (SAM encodes each slice once; every row shares it).

Usage: python scripts/ablate_levers.py --data ../shared/data/prostate --cases Case29,Case30 --output runs/ablation.json
Rows: the previous default (largest 3D component of the coarse mask), then reorientation, plausible
component choice, left-right test-time augmentation and box refinement added one at a time, and
ground-truth boxes. The JSON (written after every case, so a partial run is usable) holds the
per-case scores and every slice's confidence for each row; scripts/robustness_tables.py makes the tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from SAMProstateSDGLib.apps.robustness import SuiteResult, run_suite
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import CoarseOptions, ComponentFilter, ProposalOptions, boxes_from_labels, filtered_mask, propose_boxes
from SAMProstateSDGLib.masks.confidence import slice_confidences
from SAMProstateSDGLib.methods.registry import DEFAULT_METHOD, method
from SAMProstateSDGLib.pipeline.localisation import coarse_probabilities
from SAMProstateSDGLib.pipeline.segmenter import PreparedVolume, ProstateSegmenter

REFINE_MARGIN_MM = 1.0


def lever_predictors(segmenter: ProstateSegmenter):
    cache: dict[tuple[int, str], np.ndarray] = {}

    def probabilities(volume: PreparedVolume, options: CoarseOptions) -> np.ndarray:
        key = (id(volume), options.name)
        if key not in cache:
            cache.clear() if all(k[0] != id(volume) for k in cache) else None
            cache[key] = coarse_probabilities(segmenter.coarse, volume.image, options, volume.normalised)
        return cache[key]

    def boxes_row(options: CoarseOptions, component_filter: ComponentFilter, refine: bool = False):
        def predict(volume: PreparedVolume, _labels: np.ndarray):
            p = probabilities(volume, options)
            spacing = volume.image.GetSpacing()
            session = segmenter.box_session(volume, propose_boxes(p, spacing, ProposalOptions(component_filter=component_filter)))
            if refine:
                session = segmenter.box_session(volume, segmenter.refined_boxes(volume, session, REFINE_MARGIN_MM))
            component = filtered_mask(p, component_filter=component_filter, spacing_xyz=spacing)
            return session.labels, slice_confidences(session.labels > 0, component, p, session.predicted_iou)

        return predict

    base, reorient, tta = CoarseOptions(), CoarseOptions(reorient=True), CoarseOptions(reorient=True, tta=True)
    return {
        "coarse alone (p > 0.75)": lambda volume, _: ((probabilities(volume, base) > 0.75).astype(np.uint8), None),
        "A: largest 3D component (previous default)": boxes_row(base, ComponentFilter.VOLUME),
        "B: A + reorient": boxes_row(reorient, ComponentFilter.VOLUME),
        "C: B + plausible component": boxes_row(reorient, ComponentFilter.PLAUSIBLE),
        "D: C + left-right TTA": boxes_row(tta, ComponentFilter.PLAUSIBLE),
        "E: C + box refinement": boxes_row(reorient, ComponentFilter.PLAUSIBLE, refine=True),
        "F: D + box refinement": boxes_row(tta, ComponentFilter.PLAUSIBLE, refine=True),
        "SAM + ground-truth boxes (upper bound)": lambda volume, labels: (segmenter.segment_with_boxes(volume, boxes_from_labels(labels > 0)), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cases", required=True, help="comma-separated case names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--coarse-checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a shared CPU)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    segmenter = ProstateSegmenter.load("cpu", coarse_checkpoint=arguments.coarse_checkpoint)
    wanted = arguments.cases.split(",")
    cases = sorted((case for case in find_cases(arguments.data) if case.name in wanted), key=lambda case: wanted.index(case.name))
    predictors = lever_predictors(segmenter)
    merged: SuiteResult | None = None
    for case in cases:
        result = run_suite(method(DEFAULT_METHOD).load(segmenter), [case], arguments.seed, predictors=predictors)
        if merged is None:
            merged = result
        else:
            for row, shifts in result.scores.items():
                for shift, scores in shifts.items():
                    merged.scores[row].setdefault(shift, {}).update(scores)
            merged.slices += result.slices
        arguments.output.write_text(json.dumps(merged.to_json(), indent=1))
        print(f"{case.name} done", flush=True)


if __name__ == "__main__":
    main()

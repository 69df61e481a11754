"""Screen localisation levers under the acquisition shifts, at the box level (no SAM: about 1 s a volume).

Usage: python scripts/screen_localisation.py --data ../shared/data/prostate [--split source-extra] [--levers base,n4,...]
For each case, shift and lever: Dice of the filtered coarse mask, mean box IoU against the
reference's tight boxes (every slice with gland or a box; a missing box scores 0), and the share of
the reference's gland slices whose proposed box centre lies in the gland. Prints Markdown and
writes --json. Tune on source-extra; the unseen cases are only a check.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from SAMProstateSDGLib.apps.acquisition_shifts import SHIFTS, shifted_case
from SAMProstateSDGLib.core.catalog import default_entry
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import CoarseOptions, ComponentFilter, ProposalOptions, boxes_from_labels, filtered_mask, propose_boxes
from SAMProstateSDGLib.masks.metrics import dice_score
from SAMProstateSDGLib.modeling.coarse_net import CoarseSegmenter
from SAMProstateSDGLib.pipeline.localisation import coarse_probabilities


def box_iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a.as_tuple()
    bx0, by0, bx1, by1 = b.as_tuple()
    w, h = min(ax1, bx1) - max(ax0, bx0) + 1, min(ay1, by1) - max(ay0, by0) + 1
    inter = max(w, 0) * max(h, 0)
    union = (ax1 - ax0 + 1) * (ay1 - ay0 + 1) + (bx1 - bx0 + 1) * (by1 - by0 + 1) - inter
    return inter / union


def box_metrics(boxes, labels) -> dict[str, float]:
    reference = boxes_from_labels(labels)
    slices = reference.keys() | boxes.keys()
    ious = [box_iou(boxes[k], reference[k]) if k in boxes and k in reference else 0.0 for k in slices]
    hits = []
    for k in reference:
        if k in boxes:
            box = boxes[k]
            x, y = int(round((box.x0 + box.x1) / 2)), int(round((box.y0 + box.y1) / 2))
            hits.append(bool(labels[k, y, x] > 0))
        else:
            hits.append(False)
    return {"box_iou": float(np.mean(ious)), "centre_in_gland": float(np.mean(hits))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="source-extra")
    parser.add_argument("--levers", default="base")
    parser.add_argument("--coarse-checkpoint", type=Path)
    parser.add_argument("--shifts", default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    torch.set_num_threads(2)
    entry = default_entry("coarse")
    coarse = CoarseSegmenter.from_checkpoint(arguments.coarse_checkpoint or entry.path, torch.device("cpu"), None if arguments.coarse_checkpoint else entry.sha256)
    levers = {name: CoarseOptions.named(name) for name in arguments.levers.split(",")}
    filters = (ComponentFilter.VOLUME, ComponentFilter.PLAUSIBLE)
    lever_names = [f"{name}, {component_filter.value}" for name in levers for component_filter in filters]
    shifts = [None] + [shift for shift in SHIFTS if arguments.shifts == "all" or shift.name in arguments.shifts.split(";")]
    cases = find_cases(arguments.data, split=arguments.split)
    results = []
    timings = {name: [] for name in levers}
    for case in cases:
        image0, labels0 = case.read()
        for shift in shifts:
            image, labels = (image0, labels0) if shift is None else shifted_case(shift, image0, labels0, arguments.seed, case.name)
            for name, options in levers.items():
                start = time.perf_counter()
                probabilities = coarse_probabilities(coarse, image, options)
                timings[name].append(time.perf_counter() - start)
                for component_filter in filters:
                    boxes = propose_boxes(probabilities, image.GetSpacing(), ProposalOptions(component_filter=component_filter))
                    mask = filtered_mask(probabilities, component_filter=component_filter, spacing_xyz=image.GetSpacing())
                    row = {"case": case.name, "shift": "clean" if shift is None else shift.name, "lever": f"{name}, {component_filter.value}",
                           "coarse_dice": dice_score(mask, labels > 0), **box_metrics(boxes, labels)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    shift_names = ["clean"] + [shift.name for shift in shifts if shift is not None]
    for metric in ("coarse_dice", "box_iou", "centre_in_gland"):
        print(f"\n{metric} (mean / min over cases)\n\n| shift | " + " | ".join(lever_names) + " |\n" + "|---" * (len(lever_names) + 1) + "|")
        for shift_name in shift_names:
            cells = []
            for lever in lever_names:
                values = [row[metric] for row in results if row["shift"] == shift_name and row["lever"] == lever]
                cells.append(f"{np.mean(values):.3f} / {np.min(values):.2f}")
            print(f"| {shift_name} | " + " | ".join(cells) + " |")
    print("\nseconds per volume: " + ", ".join(f"{name} {np.mean(values):.2f}" for name, values in timings.items()))
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

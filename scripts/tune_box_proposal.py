"""Choose the box margin and component filter on in-domain cases (never on the unseen site).

Usage: python scripts/tune_box_proposal.py --data ../shared/data/prostate
Scores SAM + proposed boxes on the RUNMC validation cases of the shipped coarse model and on the
source-extra cases, for each margin and filter, and prints mean whole-gland Dice per setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from SAMProstateSDGLib.core.catalog import default_entry
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import ComponentFilter, ProposalOptions
from SAMProstateSDGLib.masks.metrics import score
from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

MARGINS_MM = (0.0, 1.0, 2.0, 3.0, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    arguments = parser.parse_args()
    manifest = json.loads(default_entry("coarse").path.with_suffix(".json").read_text())
    cases = [case for case in find_cases(arguments.data, site="RUNMC") if case.name in manifest["validation_cases"]]
    cases += find_cases(arguments.data, split="source-extra")
    segmenter = ProstateSegmenter.load()
    settings = [(margin, component_filter) for component_filter in (ComponentFilter.SLICE, ComponentFilter.VOLUME) for margin in MARGINS_MM]
    dices = {setting: [] for setting in settings}
    for case in tqdm(cases, desc="cases"):
        image, labels = case.read()
        reference = labels > 0
        volume = segmenter.prepare(image)
        spacing_zyx = tuple(reversed(image.GetSpacing()))
        for margin, component_filter in settings:
            boxes = segmenter.propose_boxes(volume, ProposalOptions(margin_mm=margin, component_filter=component_filter))
            dices[(margin, component_filter)].append(score(segmenter.segment_with_boxes(volume, boxes), reference, spacing_zyx).dice)
    print(f"{len(cases)} in-domain cases: {', '.join(case.name for case in cases)}")
    print("| filter | margin (mm) | mean Dice |\n|---|---|---|")
    for (margin, component_filter), values in dices.items():
        print(f"| {component_filter.value} | {margin:.0f} | {np.mean(values):.4f} |")


if __name__ == "__main__":
    main()

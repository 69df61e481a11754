"""Choose the box margin and component filter on in-domain cases (never on the unseen site).

Usage: python scripts/tune_box_proposal.py --data ../shared/data/prostate [--json margins.json]
Scores SAM + proposed boxes on the RUNMC validation cases of the shipped coarse model and on the
source-extra cases, for each margin and filter, and prints mean whole-gland Dice per setting
(``table`` renders the README's table from the JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from SAMProstateSDGLib.core.catalog import default_entry
from SAMProstateSDGLib.core.files import write_json
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import ComponentFilter, ProposalOptions
from SAMProstateSDGLib.masks.metrics import score
from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

MARGINS_MM = (0.0, 1.0, 2.0, 3.0, 5.0)
FILTER_NAMES = {ComponentFilter.SLICE.value: "largest component per slice", ComponentFilter.VOLUME.value: "largest 3D component"}


def validation_cases(manifest: dict) -> list[str]:
    """The RUNMC cases the coarse model never trained on: its own, or every ensemble member's."""
    members = manifest.get("members", [manifest])
    held_out = set(members[0]["validation_cases"])
    for member in members[1:]:
        held_out &= set(member["validation_cases"])
    return sorted(held_out)


def table(results: dict) -> str:
    """Mean Dice per filter (rows) and margin (columns), the best setting in bold."""
    margins = sorted({row["margin_mm"] for row in results["settings"]})
    best = max(row["mean_dice"] for row in results["settings"])
    lines = [f"| margin (mm) | {' | '.join(f'{margin:g}' for margin in margins)} |", "|---|" + "---|" * len(margins)]
    for component_filter, name in FILTER_NAMES.items():
        rows = {row["margin_mm"]: row["mean_dice"] for row in results["settings"] if row["filter"] == component_filter}
        cells = [f"**{rows[margin]:.3f}**" if rows[margin] == best else f"{rows[margin]:.3f}" for margin in margins]
        lines.append(f"| {name} ({component_filter}) | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="also write the per-case Dice of every setting here")
    arguments = parser.parse_args()
    held_out = validation_cases(json.loads(default_entry("coarse").path.with_suffix(".json").read_text()))
    cases = [case for case in find_cases(arguments.data, site="RUNMC") if case.name in held_out]
    cases += find_cases(arguments.data, split="source-extra")
    segmenter = ProstateSegmenter.load()
    settings = [(margin, component_filter) for component_filter in (ComponentFilter.SLICE, ComponentFilter.VOLUME) for margin in MARGINS_MM]
    dices: dict[tuple[float, ComponentFilter], list[float]] = {setting: [] for setting in settings}
    for case in tqdm(cases, desc="cases"):
        image, labels = case.read()
        reference = labels > 0
        volume = segmenter.prepare(image)
        spacing_zyx = tuple(reversed(image.GetSpacing()))
        for margin, component_filter in settings:
            boxes = segmenter.propose_boxes(volume, ProposalOptions(margin_mm=margin, component_filter=component_filter))
            dices[(margin, component_filter)].append(score(segmenter.segment_with_boxes(volume, boxes), reference, spacing_zyx).dice)
    results = {
        "cases": [case.name for case in cases],
        "settings": [
            {"filter": component_filter.value, "margin_mm": margin, "mean_dice": round(float(np.mean(values)), 4), "dice": [round(value, 4) for value in values]}
            for (margin, component_filter), values in dices.items()
        ],
    }
    print(f"{len(cases)} in-domain cases: {', '.join(results['cases'])}")
    print(table(results))
    if arguments.json:
        write_json(arguments.json, results, indent=1)


if __name__ == "__main__":
    main()

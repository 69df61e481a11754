"""Tables for the README from robustness-suite JSON files (samprostate evaluate --shifts, scripts/ablate_levers.py).

Usage: python scripts/robustness_tables.py runs/ablation_source_extra.json runs/ablation_unseen.json [--row NAME] [--flags]
Prints, per file: mean Dice (worst case) per shift for every row, the rows' means over all shifts, and
(with --flags) the share of slices with Dice < 0.8 that each pair of confidence thresholds flags
against the share of all slices flagged.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

IOU_THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.88, 0.90)
AGREEMENT_THRESHOLDS = (0.0, 0.60, 0.70, 0.80, 0.85)


def ablation_table(data: dict) -> str:
    rows = list(data["scores"])
    shifts = list(next(iter(data["scores"].values())))
    lines = ["| Shift | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for shift in shifts:
        cells = []
        for row in rows:
            dices = [value["dice"] for value in data["scores"][row].get(shift, {}).values()]
            cells.append(f"{np.mean(dices):.3f} ({min(dices):.2f})" if dices else "n/a")
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    means = []
    for row in rows:
        per_shift = [np.mean([value["dice"] for value in cases.values()]) for cases in data["scores"][row].values()]
        means.append(f"**{np.mean(per_shift):.3f}** (worst shift {min(per_shift):.3f})")
    lines.append("| mean over shifts | " + " | ".join(means) + " |")
    return "\n".join(lines)


def hd95_table(data: dict, row: str) -> str:
    lines = ["| Shift | mean Dice | worst case | mean HD95 (mm) |", "|---|---|---|---|"]
    for shift, cases in data["scores"][row].items():
        dices = [value["dice"] for value in cases.values()]
        distances = [value["hd95_mm"] for value in cases.values() if value["hd95_mm"] is not None and not math.isnan(value["hd95_mm"])]
        worst = min(cases, key=lambda case: cases[case]["dice"])
        lines.append(f"| {shift} | **{np.mean(dices):.3f}** | {cases[worst]['dice']:.3f} ({worst}) | {np.mean(distances):.1f} |")
    return "\n".join(lines)


def flag_sweep(slices: list[dict], row: str) -> str:
    records = [record for record in slices if record["row"] == row]
    low = [record for record in records if record["dice"] < 0.8]
    lines = [f"{row}: {len(records)} slices, {len(low)} with Dice < 0.8 "
             f"({sum(record['predicted_iou'] is None for record in low)} of them without a box)", "",
             "| predicted IoU < | agreement < | low-Dice slices flagged | all slices flagged |", "|---|---|---|---|"]
    segmented: dict[tuple[str, str], list[int]] = {}
    for record in records:
        if record["predicted_iou"] is not None:
            segmented.setdefault((record["case"], record["shift"]), []).append(record["slice"])

    def at_end(record) -> bool:
        indices = segmented.get((record["case"], record["shift"]), [])
        return bool(indices) and record["slice"] in (min(indices), max(indices))

    for ends in (False, True):
        for iou in IOU_THRESHOLDS:
            for agreement in AGREEMENT_THRESHOLDS:
                def flagged(record, iou=iou, agreement=agreement, ends=ends):
                    if record["predicted_iou"] is None:
                        return False
                    return record["predicted_iou"] < iou or record["coarse_agreement"] < agreement or (ends and at_end(record))
                caught = np.mean([flagged(record) for record in low]) if low else math.nan
                share = np.mean([flagged(record) for record in records])
                lines.append(f"| {iou:.2f} | {agreement:.2f}{' + ends' if ends else ''} | {caught:.0%} | {share:.0%} |")
    return "\n".join(lines)


def shift_table(data: dict) -> str:
    lines = ["| Shift | Model and parameters |", "|---|---|"]
    lines += [f"| {name} | {description} |" for name, description in data["shifts"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--describe", action="store_true", help="also print the shifts and their parameters")
    parser.add_argument("--row", help="the row for the HD95 table and the flag sweep")
    parser.add_argument("--flags", action="store_true")
    arguments = parser.parse_args()
    for path in arguments.files:
        data = json.loads(path.read_text(encoding="utf-8"))
        cases = sorted({case for row in data["scores"].values() for cases in row.values() for case in cases})
        print(f"\n### {path} ({len(cases)} cases: {', '.join(cases)}; seed {data['seed']})\n")
        if arguments.describe:
            print(shift_table(data) + "\n")
        print(ablation_table(data))
        if arguments.row:
            print("\n" + hd95_table(data, arguments.row))
            if arguments.flags:
                print("\n" + flag_sweep(data["slices"], arguments.row))


if __name__ == "__main__":
    main()

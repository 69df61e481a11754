"""A fast proxy for the coarse network under the robustness suite's shifts (no SAM): coarse Dice and box placement.

Usage: python scripts/coarse_shift_proxy.py --data ../shared/data/prostate \
           --checkpoint shipped=PATH [--checkpoint dg=PATH] [--shift "endorectal coil" ...] --json proxy.json
       python scripts/coarse_shift_proxy.py --table proxy_shipped.json proxy_dg.json [--output proxy.md]

Every checkpoint reads the same volumes: the 12 source-extra and unseen cases, clean and under
each shift of ``apps/acquisition_shifts.SHIFTS`` (the suite's seeded models, seed 0, exactly the
volumes ``samprostate evaluate --shifts`` scores), through the shipped coarse levers
(reorientation to LPS). Per case and component rule (``3d``: the largest 3D component, the
default; ``plausible`` and ``profile``: ``component_choice``): the coarse Dice of the kept component; the share of
gland slices whose proposed box (3 mm margin) has its centre inside the reference gland; and the
box coverage, the share of the reference gland's voxels on gland slices that lie inside their
slice's box (a too-small or missing box lowers it); and the boxes on slices without gland, per
gland slice. The JSON is rewritten after every case; with ``--cache DIR`` each volume's
probabilities and reference are kept there, so a rerun (a new rule) reads them instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SAMProstateSDGLib.apps.acquisition_shifts import SHIFTS, select_shifts, shifted_case
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import DEFAULT_COARSE_OPTIONS, ComponentFilter, ProposalOptions, filtered_mask, propose_boxes
from SAMProstateSDGLib.modeling.coarse_net import CoarseSegmenter
from SAMProstateSDGLib.pipeline.localisation import coarse_probabilities

CLEAN = "clean"
RULES = (ComponentFilter.VOLUME, ComponentFilter.PLAUSIBLE, ComponentFilter.PROFILE)


def measure(probabilities: np.ndarray, spacing_xyz: tuple[float, ...], reference: np.ndarray, rule: ComponentFilter) -> dict[str, float]:
    """Coarse Dice of the kept component, box-centre-in-gland share and box coverage of the gland."""
    component = filtered_mask(probabilities, component_filter=rule, spacing_xyz=spacing_xyz)
    dice = 2 * np.logical_and(component, reference).sum() / max(component.sum() + reference.sum(), 1)
    boxes = propose_boxes(probabilities, spacing_xyz, ProposalOptions(component_filter=rule))
    gland_slices = np.flatnonzero(reference.any(axis=(1, 2)))
    centres, covered = 0, 0
    for index in gland_slices:
        box = boxes.get(int(index))
        if box is None:
            continue
        rows, columns = reference[index].shape
        centres += bool(reference[index, min(rows - 1, int(round((box.y0 + box.y1) / 2))), min(columns - 1, int(round((box.x0 + box.x1) / 2)))])
        y0, y1 = max(0, int(np.floor(box.y0))), int(np.ceil(box.y1)) + 1
        x0, x1 = max(0, int(np.floor(box.x0))), int(np.ceil(box.x1)) + 1
        covered += int(reference[index, y0:y1, x0:x1].sum())
    return {
        "extra_boxes": sum(not reference[index].any() for index in boxes) / max(len(gland_slices), 1),
        "dice": float(dice),
        "centre_share": centres / max(len(gland_slices), 1),
        "coverage": covered / max(int(reference[gland_slices].sum()), 1),
    }


def coarse_reading(arguments, segmenter, label, case, name, shift, image, labels) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(probabilities, reference gland mask, spacing) of the shifted case, from the cache when it holds them."""
    cached = arguments.cache / f"{label}__{case.name}__{name.split(' (')[0].replace(' ', '_').replace(':', '')}.npz" if arguments.cache else None
    if cached is not None and cached.is_file():
        stored = np.load(cached)
        return stored["probabilities"].astype(np.float32), stored["reference"], tuple(stored["spacing"])
    shifted, reference = (image, labels) if shift is None else shifted_case(shift, image, labels, arguments.seed, case.name)
    probabilities = coarse_probabilities(segmenter, shifted, DEFAULT_COARSE_OPTIONS)
    if cached is not None:
        arguments.cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cached, probabilities=probabilities.astype(np.float16), reference=reference > 0, spacing=np.array(shifted.GetSpacing()))
    return probabilities, reference > 0, shifted.GetSpacing()


def run(arguments) -> None:
    torch.set_num_threads(arguments.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(arguments.threads)
    models = {label: CoarseSegmenter.from_checkpoint(path, torch.device("cpu")) for label, path in (item.split("=", 1) for item in arguments.checkpoint)}
    shifts = select_shifts(arguments.shift) if arguments.shift else SHIFTS
    cases = find_cases(arguments.data, split="source-extra") + find_cases(arguments.data, split="unseen")
    if arguments.cases:
        cases = [case for case in cases if case.name in arguments.cases.split(",")]
    # label -> rule -> shift -> case -> figures
    results: dict = {label: {rule.value: {} for rule in RULES} for label in models}
    for case in cases:
        image, labels = case.read()
        for shift in (None, *shifts):
            name = CLEAN if shift is None else shift.name
            for label, segmenter in models.items():
                probabilities, reference, spacing = coarse_reading(arguments, segmenter, label, case, name, shift, image, labels)
                for rule in RULES:
                    results[label][rule.value].setdefault(name, {})[case.name] = measure(probabilities, spacing, reference, rule)
        print(f"{case.name} done", flush=True)
        arguments.json.write_text(json.dumps(results, indent=1) + "\n")


def table(files: list[Path], rule: str) -> str:
    """One line per shift; per checkpoint the coarse Dice mean / min, box-centre share and box coverage (means over cases).
    ``rule``: a component rule, or several separated by commas (side by side, per checkpoint)."""
    merged: dict = {}  # files measured on other shifts or cases add to each other
    for file in files:
        for label, rules in json.loads(file.read_text(encoding="utf-8")).items():
            for rule_name, shifts in rules.items():
                for shift, cases in shifts.items():
                    merged.setdefault(label, {}).setdefault(rule_name, {}).setdefault(shift, {}).update(cases)
    rules = rule.split(",")
    columns = [(label, name) for label in merged for name in rules]
    titles = [label if len(rules) == 1 else f"{label}, {name}" for label, name in columns]
    shifts = list(merged[columns[0][0]][rules[0]])
    lines = [
        f"| shift ({' / '.join(rules)} component) | " + " | ".join(f"{title}: coarse Dice mean / min | {title}: box centre in gland / box coverage / boxes off the gland" for title in titles) + " |",
        "|---|" + "---|---|" * len(columns),
    ]
    for shift in shifts:
        cells = []
        for label, name in columns:
            figures = list(merged[label][name].get(shift, {}).values())
            dice = [value["dice"] for value in figures]
            cells.append(f"{np.mean(dice):.3f} / {min(dice):.3f}" if dice else "n/a")
            shares = [np.mean([value.get(key, np.nan) for value in figures]) for key in ("centre_share", "coverage", "extra_boxes")] if dice else []
            cells.append(" / ".join(f"{share:.2f}" for share in shares) if dice else "n/a")
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--checkpoint", action="append", help="LABEL=PATH, repeatable")
    parser.add_argument("--shift", action="append", help="only this suite shift (name or its start; repeatable; default: all)")
    parser.add_argument("--cases", help="only these cases, comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="the suite's seed (default 0, as evaluate --shifts)")
    parser.add_argument("--json", type=Path, help="per-case figures, rewritten after every case")
    parser.add_argument("--cache", type=Path, help="keep (and reuse) each volume's probabilities and reference here")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and SimpleITK")
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of these JSON files instead of measuring")
    parser.add_argument("--rule", default=ComponentFilter.VOLUME.value, help="--table: the component rule to tabulate (3d, plausible, profile; several, comma-separated, side by side)")
    parser.add_argument("--output", type=Path, help="--table: also write the Markdown table here")
    arguments = parser.parse_args()
    if arguments.table:
        text = table(arguments.table, arguments.rule)
        print(text)
        if arguments.output:
            arguments.output.write_text(text + "\n")
        return
    if not (arguments.data and arguments.checkpoint and arguments.json):
        parser.error("measuring needs --data, --checkpoint and --json")
    run(arguments)


if __name__ == "__main__":
    main()

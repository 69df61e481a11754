"""``samprostate evaluate --clicks N``: a simulated user corrects the automatic result, slice by slice.

Each case starts from the automatic result (coarse boxes + SAM). On every slice with gland in
the reference or a proposed box, the simulated user (``masks.clicks.next_click``) adds up to N
clicks, one at a time (negative ones on a box over no gland), and the slice is re-decoded from its
box, all its clicks and (for the interactive decoder) its previous low-resolution mask. Two
decoders are compared on the same embeddings: LiteMedSAM zero-shot with clicks as box edits
(``box_from_clicks``: today's behaviour) and the point-trained interactive decoder.
Reported: whole-gland Dice per case after 0, 1, 2, 3, 5 clicks (mean over cases) and NoC@90,
the clicks a slice needs to reach Dice 0.90 (N when it never does), averaged over gland slices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.catalog import INTERACTIVE_KIND, catalog
from ..core.files import write_json, write_text_atomically
from ..io.dataset import Case
from ..masks.boxes import Box, box_from_clicks, start_box
from ..masks.clicks import Click
from ..masks.confidence import mask_dice
from ..masks.metrics import dice_score
from ..modeling.interactive import ClickRefiner, InteractiveDecoder, Refined, RefineStep, SliceClicks, simulate_clicks
from ..modeling.sam_engine import Prompt, SamEngine
from ..pipeline.segmenter import ProstateSegmenter

REPORTED_CLICKS = (0, 1, 2, 3, 5)
NOC_DICE = 0.90
BOX_EDIT = "LiteMedSAM zero-shot, clicks as box edits"
INTERACTIVE = "interactive decoder (box + clicks + previous mask)"


@dataclass
class CaseClicks:
    """One case under one decoder: whole-gland Dice after k = 0..N clicks per gland slice, and each gland slice's clicks to Dice 0.90."""

    case: str
    split: str
    decoder: str
    dice: list[float]
    clicks_to_target: list[int]
    reached_target: list[bool]


def box_edit_step(engine: SamEngine, embedding, shape: tuple[int, int]) -> RefineStep:
    """Today's behaviour for a box-only SAM: the clicks move the slice's box, which alone prompts the decoder."""

    def step(state: SliceClicks) -> Refined:
        points = tuple((click.x, click.y) for click in state.clicks)
        box = box_from_clicks(state.box, points, tuple(click.label for click in state.clicks), shape) if state.clicks else state.box
        if box is None:  # one positive click and no box: nothing to prompt LiteMedSAM with yet
            return Refined(np.zeros(shape, dtype=bool), None, 0.0)
        mask, iou = engine.decode_scored(embedding, Prompt(box=box.as_tuple()), shape)
        return Refined(mask, None, iou)

    return step


def interactive_step(refiner: ClickRefiner, embedding, shape: tuple[int, int]) -> RefineStep:
    return lambda state: refiner.refine(embedding, shape, state)


def clicks_to_reach(dice_by_click: list[float], target: float = NOC_DICE) -> int:
    """Clicks until a slice's Dice reaches ``target``, capped at the clicks simulated (len - 1)."""
    return next((clicks for clicks, dice in enumerate(dice_by_click) if dice >= target), len(dice_by_click) - 1)


def first_click_start(
    boxes: dict[int, Box], index: int, shape: tuple[int, int], probabilities: np.ndarray, spacing_xy: tuple[float, ...], click: Click
) -> Box | None:
    """The box a first click on a slice without one starts from (``masks.boxes.start_box``)."""
    return start_box(boxes, index, ((click.x, click.y),), (click.label,), shape, probabilities, spacing_xy)


def simulate_case(
    segmenter: ProstateSegmenter, decoders: list[str], case: Case, clicks: int, interactive: ClickRefiner | None
) -> list[CaseClicks]:
    """Both decoders' click sessions on one case (the slices are encoded once)."""
    image, reference = case.read()
    volume = segmenter.prepare(image)
    boxes: dict[int, Box] = segmenter.propose_boxes(volume)
    probabilities = segmenter.coarse_probabilities(volume)
    automatic = segmenter.segment_with_boxes(volume, boxes) > 0  # what the user sees before clicking (both decoders)
    gland = {int(index) for index in np.flatnonzero((reference > 0).any(axis=(1, 2)))}
    shape = reference.shape[1:]
    results = []
    for name in decoders:
        labels = np.zeros((clicks + 1, *reference.shape), dtype=bool)
        slice_clicks, reached = [], []
        for index in sorted(gland | boxes.keys()):
            volume.encoded.encode([index])
            embedding = volume.encoded.embeddings[index]
            first_click_box = None
            if name == BOX_EDIT:
                step = box_edit_step(segmenter.sam, embedding, shape)
            else:
                assert interactive is not None  # the interactive decoder is among the decoders only with a refiner
                step = interactive_step(interactive, embedding, shape)
                first_click_box = partial(first_click_start, boxes, index, shape, probabilities[index], volume.spacing_xy)  # as refine_slice does
            masks = simulate_clicks(step, reference[index] > 0, SliceClicks(boxes.get(index)), clicks, first_click_box, automatic[index])
            masks += [masks[-1]] * (clicks + 1 - len(masks))
            labels[:, index] = masks
            if index in gland:
                slice_dice = [mask_dice(mask > 0, reference[index] > 0) for mask in masks]  # exact: a float32 0.9 is below 0.90
                slice_clicks.append(clicks_to_reach(slice_dice))
                reached.append(max(slice_dice) >= NOC_DICE)
        dice = [round(dice_score(labels[count], reference), 4) for count in range(clicks + 1)]
        results.append(CaseClicks(case.name, case.split, name, dice, slice_clicks, reached))
    return results


def run_click_evaluation(
    segmenter: ProstateSegmenter, cases: list[Case], clicks: int, decoder: InteractiveDecoder | None, box_edit: bool = True
) -> list[CaseClicks]:
    """Every case under the box-edit baseline (unless ``box_edit`` is False) and, when given, the interactive decoder."""
    refiner = None if decoder is None else ClickRefiner(segmenter.sam, decoder)
    decoders = ([BOX_EDIT] if box_edit else []) + ([] if refiner is None else [INTERACTIVE])
    results = []
    for case in tqdm(cases, desc="simulated clicks"):
        results += simulate_case(segmenter, decoders, case, clicks, refiner)
    return results


def summary(results: list[CaseClicks], clicks: int) -> list[dict]:
    """Per split and decoder: mean whole-gland Dice after the reported click counts, NoC@90, the share of slices reaching 0.90."""
    rows = []
    for split in dict.fromkeys(result.split for result in results):
        for decoder in dict.fromkeys(result.decoder for result in results):
            chosen = [result for result in results if result.split == split and result.decoder == decoder]
            per_slice = [count for result in chosen for count in result.clicks_to_target]
            reached = [flag for result in chosen for flag in result.reached_target]
            rows.append(
                {
                    "split": split,
                    "decoder": decoder,
                    "cases": len(chosen),
                    "gland_slices": len(per_slice),
                    "mean_dice": {count: round(float(np.mean([result.dice[count] for result in chosen])), 4) for count in range(clicks + 1)},
                    "noc90": round(float(np.mean(per_slice)), 2),
                    "reached_90": round(float(np.mean(reached)), 3),
                }
            )
    return rows


def markdown(results: list[CaseClicks], clicks: int) -> str:
    shown = [count for count in REPORTED_CLICKS if count <= clicks]
    lines = [
        f"| split | decoder | cases | gland slices | {' | '.join(f'Dice {count} clicks' for count in shown)} | NoC@90 (cap {clicks}) | slices reaching 0.90 |",
        "|---|---|---|---|" + "---|" * len(shown) + "---|---|",
    ]
    for row in summary(results, clicks):
        dice = " | ".join(f"{row['mean_dice'][count]:.3f}" for count in shown)
        lines.append(f"| {row['split']} | {row['decoder']} | {row['cases']} | {row['gland_slices']} | {dice} | {row['noc90']:.2f} | {row['reached_90']:.0%} |")
    lines += ["", f"| case | split | decoder | Dice 0 clicks | Dice {min(3, clicks)} clicks | NoC@90 |", "|---|---|---|---|---|---|"]
    for result in results:
        lines.append(
            f"| {result.case} | {result.split} | {result.decoder} | {result.dice[0]:.3f} | {result.dice[min(3, clicks)]:.3f} | "
            f"{np.mean(result.clicks_to_target):.2f} |"
        )
    return "\n".join(lines)


def to_json(results: list[CaseClicks], clicks: int, decoder_file: Path | None) -> dict:
    return {
        "clicks": clicks,
        "noc_dice": NOC_DICE,
        "interactive_decoder": None if decoder_file is None else str(decoder_file),
        "summary": summary(results, clicks),
        "cases": [asdict(result) for result in results],
    }


def shipped_decoder_entry():
    """The catalog's point-trained decoder, or None when none is shipped."""
    return next((entry for entry in catalog().values() if entry.kind == INTERACTIVE_KIND), None)


def run_from_arguments(arguments, segmenter: ProstateSegmenter, cases: list[Case]) -> str:
    """``evaluate --clicks N``: the table (printed by the caller) and, with ``--output``, NAME.md and NAME.json."""
    entry = arguments.interactive_decoder_entry or shipped_decoder_entry()  # a trained one (its manifest and sha256 checked), or the shipped one
    path = None if entry is None else entry.path
    decoder = None if entry is None else InteractiveDecoder.from_checkpoint(segmenter.sam.sam, entry.path, entry.sha256)
    results = run_click_evaluation(segmenter, cases, arguments.clicks, decoder)
    table = markdown(results, arguments.clicks)
    if arguments.output:
        write_json(arguments.output.with_suffix(".json"), to_json(results, arguments.clicks, path), indent=1)
        write_text_atomically(arguments.output, table + "\n")
    return table

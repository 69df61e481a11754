"""Study confidence signals and the boxes' z extent on the robustness suite without re-encoding: cache once, decode many times.

Usage: python scripts/suite_study.py cache --data ../shared/data/prostate --cache runs/suite_cache [--cases Case29,...]
       python scripts/suite_study.py signals --cache runs/suite_cache --json runs/slice_signals.json
       python scripts/suite_study.py extent --data ../shared/data/prostate --signals runs/slice_signals.json
       python scripts/suite_study.py trim --signals runs/slice_signals.json --json results/end_trim.json
       python scripts/suite_study.py proposals --cache runs/suite_cache --json results/box_proposals.json
       python scripts/suite_study.py decoders --cache runs/suite_cache --json results/suite_decoders.json
       python scripts/suite_study.py smoothing --cache runs/suite_cache --json results/z_smoothing.json

``cache`` runs the shipped coarse network and SAM's image encoder once per volume of the suite (the 12
source-extra and unseen cases, clean and under each shift, seed 0: exactly what ``samprostate evaluate
--shifts`` scores) and stores, per volume, the coarse probabilities, the reference, the spacing and the SAM
embeddings of every slice that has gland, a coarse probability above 0.3, or such a slice next to it.

``signals`` decodes the default method's boxes from the cache and records, per slice with gland in the
reference, a box, or within two slices of the boxed extent: its Dice and candidate signals for a confidence
flag (SAM's predicted IoU, agreement with the coarse component, SAM's stability score — the Dice of the mask
thresholded at logit −1 and +1 —, the neighbouring slices' masks, the position in the boxed extent, the coarse
probability), whether the shipped rule (``masks.confidence``) flags it, and the Dice SAM reaches with the slice's
ground-truth box; it prints how well the shipped flags catch the slices with Dice < 0.8.

``extent`` says where the boxes' z extent ends against the reference (the source site's cases, coarse network
only) and what the suite's Dice would be without the segmented slices outside the reference's z extent.

``trim`` scores rules that end the z extent from the boxes' own signals, without the reference: boxed slices are
dropped from each end of the extent while the rule holds (the coarse component's cross-section under a fraction of
the volume's largest, or SAM's predicted IoU under a threshold); mean Dice per split and shift, before and after.

``proposals`` scores box proposals on the cached volumes (decoder only): the coarse threshold and box margin, and boxes
combined per slice (SAM's logits averaged over several margins, or the margin whose mask SAM's predicted IoU rates
best); the volume's Dice per split and shift, clean and under all shifts.

``decoders`` decodes the shipped boxes with LiteMedSAM's decoder (the default), the SAMMed decoder fine-tuned on
RUNMC (``--method sammed``) and the mean of their logits: the volume's Dice per split and shift.

``smoothing`` decodes the shipped boxes and smooths SAM's logits along the slices (``masks.z_smoothing``) with each of
several Gaussian sigmas before the threshold: the volume's Dice per split and shift.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from SAMProstateSDGLib.apps.acquisition_shifts import SHIFTS, shifted_case
from SAMProstateSDGLib.apps.evaluation_options import SUITE_SPLITS
from SAMProstateSDGLib.apps.robustness import CLEAN, LOW_DICE
from SAMProstateSDGLib.core.catalog import catalog_entry, default_entry
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import (
    DEFAULT_COARSE_OPTIONS,
    IN_PLANE,
    Box,
    ComponentFilter,
    ProposalOptions,
    boxes_from_labels,
    component_boxes,
    filtered_mask,
    propose_boxes,
)
from SAMProstateSDGLib.masks.confidence import mask_dice, slice_confidences
from SAMProstateSDGLib.masks.z_smoothing import LOGIT_CAP, neighbour_weights, smoothed_logits
from SAMProstateSDGLib.modeling.coarse_net import CoarseSegmenter
from SAMProstateSDGLib.modeling.sam_engine import SamEngine
from SAMProstateSDGLib.pipeline.localisation import coarse_probabilities
from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

ENCODE_ABOVE = 0.3  # slices whose coarse probability exceeds this are encoded (and their neighbours)


@dataclass
class CachedVolume:
    case: str
    shift: str
    probabilities: np.ndarray
    reference: np.ndarray
    spacing_xyz: tuple[float, float, float]
    embeddings: dict[int, torch.Tensor]

    @classmethod
    def read(cls, path: Path) -> CachedVolume:
        data = np.load(path)
        embeddings = torch.from_numpy(data["embeddings"])  # an npz member is read again at every access: once
        return cls(
            str(data["case"]), str(data["shift"]), data["probabilities"].astype(np.float32), data["reference"],
            tuple(data["spacing"].tolist()), dict(zip(data["indices"].tolist(), embeddings)),
        )


def cache(arguments: argparse.Namespace) -> None:
    cases = [case for split in SUITE_SPLITS for case in find_cases(arguments.data, split=split)]
    if arguments.cases:
        cases = [case for case in cases if case.name in arguments.cases.split(",")]
    base = ProstateSegmenter.load(device="cpu")
    arguments.cache.mkdir(parents=True, exist_ok=True)
    for case in cases:
        started = time.time()
        image, labels = case.read()
        for shift in (None, *SHIFTS):
            name = CLEAN if shift is None else shift.name
            path = arguments.cache / f"{case.name}__{name.replace(' ', '_').replace('/', '-')}.npz"
            if path.exists():
                continue
            shifted, reference = (image, labels) if shift is None else shifted_case(shift, image, labels, arguments.seed, case.name)
            volume = base.prepare(shifted)
            probabilities = base.coarse_probabilities(volume)
            wanted = (probabilities.reshape(len(probabilities), -1).max(axis=1) > ENCODE_ABOVE) | (reference > 0).reshape(len(reference), -1).any(axis=1)
            wanted = ndimage.binary_dilation(wanted)
            indices = np.flatnonzero(wanted)
            volume.encoded.encode(indices)
            embeddings = np.stack([volume.encoded.embeddings[int(index)].float().numpy() for index in indices])
            np.savez(
                path, case=case.name, shift=name, probabilities=probabilities.astype(np.float16), reference=reference > 0,
                spacing=np.array(shifted.GetSpacing()), indices=indices, embeddings=embeddings,
            )
        print(f"{case.name} cached in {time.time() - started:.0f} s", flush=True)


def suite_split(case: str) -> str:
    """The suite split a cached case belongs to (the cache stores the case name only)."""
    return "unseen" if case.startswith("P158") else "source-extra"


def cached_volumes(folder: Path) -> Iterator[CachedVolume]:
    for path in sorted(folder.glob("*.npz")):
        yield CachedVolume.read(path)


@torch.inference_mode()
def box_logits(engine: SamEngine, embedding: torch.Tensor, box: Box, slice_shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """SAM's full-resolution logits for one box (single-mask output, as the pipeline decodes) and its predicted IoU."""
    boxes = engine.transform.apply_boxes_torch(torch.tensor([box.as_tuple()], dtype=torch.float32), slice_shape)
    sparse, dense = engine.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    low, scores = engine.sam.mask_decoder(
        image_embeddings=embedding[None], image_pe=engine.sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
    )
    logits = engine.sam.postprocess_masks(low, engine.input_size(slice_shape), slice_shape)
    return logits[0, 0].float().numpy(), float(scores[0, 0])


def volume_signals(engine: SamEngine, volume: CachedVolume, options: ProposalOptions) -> list[dict]:
    shape = volume.reference.shape[1:]
    boxes = propose_boxes(volume.probabilities, volume.spacing_xyz, options)
    component = filtered_mask(volume.probabilities, options.threshold, options.component_filter, volume.spacing_xyz)
    truth_boxes = boxes_from_labels(volume.reference)
    predicted = np.zeros(volume.reference.shape, dtype=bool)
    decoded: dict[int, tuple[np.ndarray, float]] = {}
    for index, box in boxes.items():
        decoded[index] = box_logits(engine, volume.embeddings[index], box, shape)
        predicted[index] = decoded[index][0] > 0
    confidences = slice_confidences(predicted, component, volume.probabilities, {index: score for index, (_, score) in decoded.items()})
    boxed = sorted(boxes)
    first, last = (boxed[0], boxed[-1]) if boxed else (-1, -1)
    near = set(range(max(0, first - 2), min(len(predicted), last + 3))) if boxed else set()
    reference = volume.reference
    indices = sorted(set(np.flatnonzero(reference.reshape(len(reference), -1).any(axis=1)).tolist()) | set(boxed) | near)
    records = []
    for index in indices:
        record: dict = {
            "case": volume.case, "shift": volume.shift, "slice": int(index), "boxed": index in boxes,
            "dice": mask_dice(predicted[index], reference[index]),
            "reference_area": int(reference[index].sum()), "predicted_area": int(predicted[index].sum()),
            "from_first": int(index - first) if boxed else None, "to_last": int(last - index) if boxed else None,
            "boxed_slices": len(boxed), "flagged": index in confidences and confidences[index].flagged, "pixel_mm2": float(volume.spacing_xyz[0] * volume.spacing_xyz[1]), "slice_mm": float(volume.spacing_xyz[2]),
            "coarse_max": float(volume.probabilities[index].max()), "component_area": int(component[index].sum()),
            "coarse_agreement": mask_dice(predicted[index], component[index]),
            "neighbour_dice": [mask_dice(predicted[index], predicted[other]) for other in (index - 1, index + 1) if 0 <= other < len(predicted)],
            "neighbour_area": [int(predicted[other].sum()) for other in (index - 1, index + 1) if 0 <= other < len(predicted)],
        }
        if index in boxes:
            box = boxes[index]
            logits, iou = decoded[index]
            mask = logits > 0
            record["predicted_iou"] = iou
            record["stability"] = mask_dice(logits > 1, logits > -1)
            record["mean_probability_in_mask"] = float(volume.probabilities[index][mask].mean()) if mask.any() else 0.0
            record["box_area"] = float((box.x1 - box.x0) * (box.y1 - box.y0))
        if index in truth_boxes and index in volume.embeddings:
            truth_logits, truth_iou = box_logits(engine, volume.embeddings[index], truth_boxes[index], shape)
            record["truth_box_dice"] = mask_dice(truth_logits > 0, reference[index])
            record["truth_box_iou"] = truth_iou
        records.append(record)
    return records


def previous_rule(record: dict) -> bool:
    """The flag before issue 15's study: predicted IoU or coarse agreement below 0.80, boxed slices only."""
    return record["boxed"] and (record["predicted_iou"] < 0.8 or record["coarse_agreement"] < 0.8)


def flag_summary(records: list[dict]) -> dict[str, dict[str, float]]:
    """As ``evaluate --shifts`` counts (``apps.robustness``): slices with gland in the reference or the prediction, or
    flagged; per split, the share of the slices with Dice < LOW_DICE that are flagged and the share of all flagged, for
    the shipped rule and the previous one, and the share of the low-Dice slices without a box."""
    summary = {}
    for split, chosen in (("source-extra", False), ("unseen", True), ("all", None)):
        counted = [
            record for record in records
            if (record["reference_area"] or record["predicted_area"] or record["flagged"]) and chosen in (None, suite_split(record["case"]) == "unseen")
        ]
        low = [record for record in counted if record["dice"] < LOW_DICE]
        summary[split] = {
            "slices": len(counted), "low_dice_slices": len(low),
            "low_dice_flagged_share": float(np.mean([record["flagged"] for record in low])),
            "flagged_share": float(np.mean([record["flagged"] for record in counted])),
            "low_dice_without_box_share": float(np.mean([not record["boxed"] for record in low])),
            "previous_rule_low_dice_flagged_share": float(np.mean([previous_rule(record) for record in low])),
            "previous_rule_flagged_share": float(np.mean([previous_rule(record) for record in counted])),
        }
    return summary


def flags_table(summary: dict[str, dict[str, float]], budget: float = 0.30) -> str:
    """Per split: the share of the slices with Dice < LOW_DICE flagged / the share of all slices flagged, for the previous
    and the shipped rule, and what a perfect flag limited to ``budget`` of the slices would catch."""
    splits = list(summary)
    lines = ["| Rule | " + " | ".join(f"{split}: bad slices caught / all flagged" for split in splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for title, prefix in (("previous: IoU < 0.80 or agreement < 0.80", "previous_rule_"), ("**shipped**: + cross-section < 20 %, + gland past the boxes (p > 0.30)", "")):
        cells = [f"{summary[split][prefix + 'low_dice_flagged_share']:.1%} / {summary[split][prefix + 'flagged_share']:.1%}" for split in splits]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    best = [f"{min(1.0, budget * summary[split]['slices'] / summary[split]['low_dice_slices']):.0%}" for split in splits]
    lines.append(f"| the best possible flag at {budget:.0%} flagged (every flag on a bad slice) | " + " | ".join(best) + " |")
    return "\n".join(lines)


def signals(arguments: argparse.Namespace) -> None:
    base = ProstateSegmenter.load(device="cpu", backend="torch", precision="fp32")  # decoder only: the encoder is never run
    records: list[dict] = []
    for volume in cached_volumes(arguments.cache):
        records += volume_signals(base.sam, volume, base.options)
    summary = flag_summary(records)
    arguments.json.write_text(json.dumps({"flags": summary, "slices": records}) + "\n")
    print(flags_table(summary))


def volume_dice(records: list[dict], kept: list[dict]) -> float:
    """A volume's Dice from its slice records, counting the predicted masks of ``kept`` only."""
    overlap = sum(record["dice"] * (record["reference_area"] + record["predicted_area"]) / 2 for record in kept)
    return 2 * overlap / (sum(record["reference_area"] for record in records) + sum(record["predicted_area"] for record in kept))


def extent(arguments: argparse.Namespace) -> None:
    """Where the boxed z extent ends against the reference: on the source site's cases (the coarse network alone)
    and, from the signals JSON, the suite's Dice with and without the segmented slices outside the reference's extent."""
    coarse_entry = default_entry("coarse")
    coarse = CoarseSegmenter.from_checkpoint(coarse_entry.path, torch.device("cpu"), coarse_entry.sha256)
    overshoot_mm = []
    for case in find_cases(arguments.data, site=arguments.site):
        image, labels = case.read()
        reference = np.flatnonzero((labels > 0).reshape(len(labels), -1).any(axis=1))
        boxed = sorted(propose_boxes(coarse_probabilities(coarse, image, DEFAULT_COARSE_OPTIONS), image.GetSpacing(), ProposalOptions()))
        if reference[0] > 0:  # slices below the reference's first slice exist: the boxes may start there
            overshoot_mm.append((reference[0] - boxed[0]) * image.GetSpacing()[2])
    print(
        f"{arguments.site}: on {len(overshoot_mm)} cases with slices below the reference's first slice, the boxes start "
        f"{np.mean(overshoot_mm):.1f} mm below it on average (max {max(overshoot_mm):.1f} mm; {sum(value > 0 for value in overshoot_mm)} start below it)"
    )
    volumes: dict[tuple[str, str], list[dict]] = {}
    for record in json.loads(arguments.signals.read_text())["slices"]:
        volumes.setdefault((record["case"], record["shift"]), []).append(record)
    by_shift: dict[str, list[tuple[float, float]]] = {}
    for (_case, shift), records in volumes.items():
        gland = [record["slice"] for record in records if record["reference_area"]]
        inside = [record for record in records if min(gland) <= record["slice"] <= max(gland)]
        by_shift.setdefault(shift, []).append((volume_dice(records, records), volume_dice(records, inside)))
    offsets = []
    for (case, shift), records in sorted(volumes.items()):
        gland = [record["slice"] for record in records if record["reference_area"]]
        boxed = [record["slice"] for record in records if record["boxed"]]
        if shift == CLEAN and boxed:
            offsets.append(f"{case} {min(boxed) - min(gland):+d}/{max(boxed) - max(gland):+d}")
    print("clean, first/last box against the reference's first/last slice (slices):", ", ".join(offsets))
    for shift, values in by_shift.items():
        print(f"{shift}: mean Dice {np.mean([value[0] for value in values]):.3f}, without the slices outside the reference's z extent {np.mean([value[1] for value in values]):.3f}")


TRIM_RULES = {
    "component < 10 % of the largest": ("component_area", 0.10),
    "component < 20 % of the largest": ("component_area", 0.20),
    "component < 30 % of the largest": ("component_area", 0.30),
    "predicted IoU < 0.80": ("predicted_iou", 0.80),
    "predicted IoU < 0.85": ("predicted_iou", 0.85),
}


def trimmed_ends(records: list[dict], signal: str, threshold: float) -> set[int]:
    """The boxed slices a trim rule drops: from each end of the boxed extent inwards while the signal is below the
    threshold (areas relative to the volume's largest), always keeping one boxed slice."""
    boxed = sorted((record for record in records if record["boxed"]), key=lambda record: record["slice"])
    largest = max((record[signal] for record in boxed), default=0) if signal.endswith("area") else 1.0
    low = [record[signal] / max(largest, 1e-9) < threshold for record in boxed]
    first = next((position for position, below in enumerate(low) if not below), len(boxed) - 1)
    last = next((position for position in range(len(boxed) - 1, first - 1, -1) if not low[position]), first)
    return {record["slice"] for position, record in enumerate(boxed) if not first <= position <= last}


def trim_study(records: list[dict]) -> dict:
    """Per split, shift and rule: mean Dice over the split's cases before and after trimming."""
    volumes: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        volumes.setdefault((record["case"], record["shift"]), []).append(record)
    results: dict = {}
    for (case, shift), volume in volumes.items():
        split = suite_split(case)
        row = results.setdefault(split, {}).setdefault(shift, {"none": []})
        row["none"].append(volume_dice(volume, volume))
        for name, (signal, threshold) in TRIM_RULES.items():
            dropped = trimmed_ends(volume, signal, threshold)
            row.setdefault(name, []).append(volume_dice(volume, [record for record in volume if record["slice"] not in dropped]))
    return {split: {shift: {rule: round(float(np.mean(values)), 4) for rule, values in rules.items()} for shift, rules in shifts.items()}
            for split, shifts in results.items()}


def trim_table(study: dict) -> str:
    """Per rule: mean Dice of each split clean and over all shifts (clean included), and its change from no trimming."""
    splits = list(study)
    lines = ["| Rule | " + " | ".join(f"{split} clean | {split} all shifts" for split in splits) + " |", "|---" * (1 + 2 * len(splits)) + "|"]
    for rule in ("none", *TRIM_RULES):
        cells = []
        for split in splits:
            for values in ([study[split][CLEAN]], list(study[split].values())):
                mean, base = np.mean([value[rule] for value in values]), np.mean([value["none"] for value in values])
                cells.append(f"{mean:.3f}" if rule == "none" else f"{mean:.3f} ({mean - base:+.3f})")
        lines.append(f"| {'no trimming (shipped)' if rule == 'none' else rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trim(arguments: argparse.Namespace) -> None:
    study = trim_study(json.loads(arguments.signals.read_text())["slices"])
    arguments.json.write_text(json.dumps(study, indent=1) + "\n")
    print(trim_table(study))


@dataclass(frozen=True)
class ProposalRule:
    """Boxes from the coarse component at ``threshold``, one per margin; one margin decodes as the pipeline does, several
    are combined per slice by ``combine``: 'mean' averages SAM's logits, 'best' keeps the mask with the highest predicted IoU."""

    threshold: float
    margins_mm: tuple[float, ...]
    combine: str = "mean"
    grow_to: float | None = None  # in-plane hysteresis: on the component's slices, grown into p > grow_to

    @property
    def name(self) -> str:
        margins = "/".join(f"{margin:g}" for margin in self.margins_mm)
        grown = f" grown to {self.grow_to:g} in-plane" if self.grow_to else ""
        return f"p > {self.threshold:g}{grown}, {margins} mm" + (f" ({self.combine})" if len(self.margins_mm) > 1 else "")

    def component(self, probabilities: np.ndarray) -> np.ndarray:
        seed = filtered_mask(probabilities, self.threshold, ComponentFilter.VOLUME)
        if self.grow_to is None:
            return seed
        labels, _ = ndimage.label(probabilities > self.grow_to, structure=IN_PLANE)
        return np.isin(labels, np.unique(labels[seed & (labels > 0)]))


PROPOSAL_RULES = (
    *(ProposalRule(threshold, (margin,)) for threshold in (0.5, 0.75) for margin in (2.0, 3.0, 4.0, 5.0, 6.0)),
    *(ProposalRule(threshold, (2.0, 4.0, 6.0), combine) for threshold in (0.5, 0.75) for combine in ("mean", "best")),
    ProposalRule(0.75, (3.0, 5.0, 7.0), "mean"),
    *(ProposalRule(0.75, (margin,), grow_to=0.5) for margin in (3.0, 5.0)),
)


def rule_dice(engine: SamEngine, volume: CachedVolume, rules: tuple[ProposalRule, ...]) -> dict[str, float]:
    """Each rule's whole-volume Dice on one cached volume; a box shared by rules is decoded once."""
    shape = volume.reference.shape[1:]
    decoded: dict[tuple[int, tuple[float, ...]], tuple[np.ndarray, float]] = {}
    components: dict[tuple[float, float | None], np.ndarray] = {}
    for rule in rules:  # rules sharing a threshold and growth share the component
        if (rule.threshold, rule.grow_to) not in components:
            components[rule.threshold, rule.grow_to] = rule.component(volume.probabilities)
    dice = {}
    for rule in rules:
        predicted = np.zeros(volume.reference.shape, dtype=bool)
        per_margin = [component_boxes(components[rule.threshold, rule.grow_to], volume.spacing_xyz, margin) for margin in rule.margins_mm]
        for index in sorted(set().union(*per_margin)):
            candidates = []
            for boxes in per_margin:
                if index in boxes:
                    key = (index, boxes[index].as_tuple())
                    if key not in decoded:
                        decoded[key] = box_logits(engine, volume.embeddings[index], boxes[index], shape)
                    candidates.append(decoded[key])
            if rule.combine == "best":
                predicted[index] = max(candidates, key=lambda candidate: candidate[1])[0] > 0
            else:
                predicted[index] = np.mean([logits for logits, _ in candidates], axis=0) > 0
        dice[rule.name] = mask_dice(predicted, volume.reference)
    return dice


def score_cached_volumes(arguments: argparse.Namespace, score) -> dict:
    """``score(volume)`` (a Dice per row) of every cached volume, by split, shift and case; written to ``--json`` as it goes."""
    results: dict = {}
    for volume in cached_volumes(arguments.cache):
        results.setdefault(suite_split(volume.case), {}).setdefault(volume.shift, {})[volume.case] = score(volume)
        arguments.json.write_text(json.dumps(results, indent=1) + "\n")
        print(volume.case, volume.shift, flush=True)
    return results


def proposals(arguments: argparse.Namespace) -> None:
    base = ProstateSegmenter.load(device="cpu", backend="torch", precision="fp32")  # decoder only
    print(proposal_table(score_cached_volumes(arguments, lambda volume: rule_dice(base.sam, volume, PROPOSAL_RULES))))


SHIPPED_DECODER, SAMMED_DECODER, MEAN_OF_DECODERS = "LiteMedSAM's decoder (shipped)", "SAMMed decoder (fine-tuned on RUNMC)", "mean of both decoders' logits"
DECODER_ROWS = (SHIPPED_DECODER, SAMMED_DECODER, MEAN_OF_DECODERS)


def decoder_dice(shipped: SamEngine, tuned: SamEngine, volume: CachedVolume) -> dict[str, float]:
    """The volume's Dice with the shipped boxes decoded by each decoder, and by the mean of their logits."""
    shape = volume.reference.shape[1:]
    predicted = {name: np.zeros(volume.reference.shape, dtype=bool) for name in DECODER_ROWS}
    for index, box in propose_boxes(volume.probabilities, volume.spacing_xyz, ProposalOptions()).items():
        base_logits, tuned_logits = (box_logits(engine, volume.embeddings[index], box, shape)[0] for engine in (shipped, tuned))
        predicted[SHIPPED_DECODER][index] = base_logits > 0
        predicted[SAMMED_DECODER][index] = tuned_logits > 0
        predicted[MEAN_OF_DECODERS][index] = base_logits + tuned_logits > 0
    return {name: mask_dice(mask, volume.reference) for name, mask in predicted.items()}


def decoders(arguments: argparse.Namespace) -> None:
    base = ProstateSegmenter.load(device="cpu", backend="torch", precision="fp32")  # decoder only
    entry = catalog_entry("sammed-litemedsam-runmc", "decoder")
    tuned = base.sam.with_mask_decoder(entry.path, entry.sha256)
    print(decoder_table(score_cached_volumes(arguments, lambda volume: decoder_dice(base.sam, tuned, volume))))


SMOOTHING_SIGMAS_MM = (0.0, 1.25, 1.5, 1.75, 2.0, 2.5)
UNCAPPED = float("inf")
SHIPPED_SMOOTHING_MM = ProposalOptions().z_smoothing_mm
SMOOTHING_ROWS = (  # (boxes, sigma, cap): each sigma with the shipped boxes, then the shipped sigma uncapped and with ground-truth boxes
    *(("", sigma_mm, LOGIT_CAP) for sigma_mm in SMOOTHING_SIGMAS_MM),
    ("", SHIPPED_SMOOTHING_MM, UNCAPPED),
    *(("ground-truth boxes", sigma_mm, cap) for sigma_mm, cap in ((0.0, LOGIT_CAP), (SHIPPED_SMOOTHING_MM, LOGIT_CAP), (SHIPPED_SMOOTHING_MM, UNCAPPED))),
)


def smoothing_row(sigma_mm: float, cap: float = LOGIT_CAP, boxes: str = "") -> str:
    name = "no smoothing" if sigma_mm == 0 else f"sigma {sigma_mm:g} mm" + (", logits not capped" if cap == UNCAPPED else "")
    return f"{boxes}: {name}" if boxes else name


def smoothing_dice(engine: SamEngine, volume: CachedVolume) -> dict[str, float]:
    """The volume's Dice with SAM's logits smoothed along the slices (``masks.z_smoothing``) at each sigma, with the
    shipped boxes; with the shipped sigma, also uncapped, and with ground-truth boxes."""
    shape = volume.reference.shape[1:]
    proposed = propose_boxes(volume.probabilities, volume.spacing_xyz, ProposalOptions())
    truth = {index: box for index, box in boxes_from_labels(volume.reference).items() if index in volume.embeddings}
    logits = {
        name: {index: box_logits(engine, volume.embeddings[index], box, shape)[0] for index, box in boxes.items()}
        for name, boxes in (("", proposed), ("ground-truth boxes", truth))
    }
    dice = {}
    for boxes_name, sigma_mm, cap in SMOOTHING_ROWS:
        weights = neighbour_weights(volume.spacing_xyz[2], sigma_mm)
        predicted = np.zeros(volume.reference.shape, dtype=bool)
        for index in logits[boxes_name]:
            predicted[index] = smoothed_logits(logits[boxes_name], index, weights, cap) > 0
        dice[smoothing_row(sigma_mm, cap, boxes_name)] = mask_dice(predicted, volume.reference)
    return dice


def smoothing(arguments: argparse.Namespace) -> None:
    base = ProstateSegmenter.load(device="cpu", backend="torch", precision="fp32")  # decoder only
    print(smoothing_table(score_cached_volumes(arguments, lambda volume: smoothing_dice(base.sam, volume))))


def split_means_table(results: dict, rows: list[str], label: str, shipped: str | None = None) -> str:
    """Per row: mean Dice of each split clean and over all shifts (clean included), and the worst shift's mean; ``shipped`` in bold."""
    splits = sorted(results)
    lines = [f"| {label} | " + " | ".join(f"{split} clean | {split} all shifts (worst shift)" for split in splits) + " |", "|---" * (1 + 2 * len(splits)) + "|"]
    for row in rows:
        cells = []
        for split in splits:
            by_shift = {shift: np.mean([case[row] for case in cases.values()]) for shift, cases in results[split].items()}
            cells += [f"{by_shift.get(CLEAN, float('nan')):.3f}", f"{np.mean(list(by_shift.values())):.3f} ({min(by_shift.values()):.3f})"]
        lines.append(f"| {f'**{row}** (shipped)' if row == shipped else row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def proposal_table(results: dict) -> str:
    shipped = ProposalRule(ProposalOptions().threshold, (ProposalOptions().margin_mm,))
    return split_means_table(results, [rule.name for rule in PROPOSAL_RULES], "Boxes", shipped.name)


def decoder_table(results: dict) -> str:
    return split_means_table(results, list(DECODER_ROWS), "Decoder (the shipped boxes)")


def smoothing_table(results: dict) -> str:
    rows = [smoothing_row(sigma_mm, cap, boxes) for boxes, sigma_mm, cap in SMOOTHING_ROWS]
    return split_means_table(results, rows, "SAM's box logits along the slices", smoothing_row(SHIPPED_SMOOTHING_MM))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("cache")
    build.add_argument("--data", type=Path, required=True)
    build.add_argument("--cases", help="only these cases, comma-separated (default: the suite's 12)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--cache", type=Path, required=True)
    study = commands.add_parser("signals")
    study.add_argument("--cache", type=Path, required=True)
    study.add_argument("--json", type=Path, required=True)
    ends = commands.add_parser("extent")
    ends.add_argument("--data", type=Path, required=True)
    ends.add_argument("--site", default="RUNMC")
    ends.add_argument("--signals", type=Path, required=True, help="the JSON of the signals command")
    trimming = commands.add_parser("trim")
    trimming.add_argument("--signals", type=Path, required=True, help="the JSON of the signals command")
    trimming.add_argument("--json", type=Path, required=True)
    proposal = commands.add_parser("proposals")
    proposal.add_argument("--cache", type=Path, required=True)
    proposal.add_argument("--json", type=Path, required=True)
    decoding = commands.add_parser("decoders")
    decoding.add_argument("--cache", type=Path, required=True)
    decoding.add_argument("--json", type=Path, required=True)
    smoothed = commands.add_parser("smoothing")
    smoothed.add_argument("--cache", type=Path, required=True)
    smoothed.add_argument("--json", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    {"cache": cache, "signals": signals, "extent": extent, "trim": trim, "proposals": proposals, "decoders": decoders, "smoothing": smoothing}[
        arguments.command
    ](arguments)


if __name__ == "__main__":
    main()

"""``samprostate bench``: where the time goes, and how much faster than the naive path we are.

Each volume runs three ways in the same process, on the same loaded models:

- naive: every slice encoded alone at full size by the plain encoder (batch 1, no cache), then one
  decode per box;
- fp32 and bf16: our pipeline at each encoder precision (``--precision``; "auto" picks bf16 on CPUs
  with native bfloat16): only slices with a box are encoded, by the fast encoder (batch norms
  folded into the convolutions, channels-last), in batches, and cached for later edits;
- merged: SAMMed's four-slice merge on gland crops (``--merge-slices``, fp32): a quarter of the
  encoder passes.

Per stage it reports the median time per volume and per slice, the Dice of each path, the time to
re-segment one slice after a box edit, the wait after a box review while the boxed slices encode
in the background, box proposal against a pure-Python BFS mask filter, peak memory and throughput.
Ratios compare paths measured in this run, so they hold on any machine.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .boxes import Box, propose_boxes
from .dataset import Case
from .evaluation import dice_score
from .model_catalog import default_entry
from .pipeline import ProstateSegmenter
from .sam_engine import Prompt, SamEngine, load_sam
from .tiling import segment_merged
from .volume_io import label_image, normalised_array, read_volume, write_image

PATHS = ("naive", "fp32", "bf16", "merged")
STAGES = ("read", "normalise", "coarse net", "component + box", "encoder", "decoder", "write")
RESEGMENT_REPEATS = 10
REVIEW_SECONDS = 10.0  # how long the user looks at the proposed boxes before pressing Segment
BOX_REPEATS = 20  # the proposal takes about a millisecond: one run would mostly time the first call


@dataclass
class VolumeTiming:
    slices: int
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds for the volume
    dice: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


class Stopwatch:
    def __init__(self, timing: VolumeTiming, stage: str):
        self.timing, self.stage = timing, stage

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exception):
        self.timing.seconds[self.stage] = self.timing.seconds.get(self.stage, 0.0) + time.perf_counter() - self.started


def plain_engine(segmenter: ProstateSegmenter) -> SamEngine:
    """The default SAM as loaded, without the fast encoder's folding and memory layout (the naive path's)."""
    entry = default_entry("sam")
    sam = load_sam(entry.model_type, entry.path, entry.sha256)
    return SamEngine(sam, segmenter.sam.device, 1, segmenter.sam.box_only, fast_encoder=False)


def run_path(segmenter: ProstateSegmenter, case: Case, path: str, folder: Path, plain: SamEngine) -> tuple[VolumeTiming, np.ndarray]:
    """One volume through one path, stage by stage; returns its timing and labels (``plain``: the naive path's engine)."""
    engine = plain if path == "naive" else segmenter.sam
    with _settings(engine, bf16=path == "bf16"):
        return _run_path(segmenter, engine, case, path, folder)


@contextmanager
def _settings(engine: SamEngine, **settings):
    """The engine with some attributes (batch_size, bf16) changed for a measurement, then restored."""
    saved = {name: getattr(engine, name) for name in settings}
    for name, value in settings.items():
        setattr(engine, name, value)
    try:
        yield engine
    finally:
        for name, value in saved.items():
            setattr(engine, name, value)


def _run_path(segmenter: ProstateSegmenter, engine: SamEngine, case: Case, path: str, folder: Path) -> tuple[VolumeTiming, np.ndarray]:
    _, reference = case.read()
    timing = VolumeTiming(len(reference))
    with Stopwatch(timing, "read"):
        image = read_volume(case.image)
    with Stopwatch(timing, "normalise"):
        slices = normalised_array(image)
    with Stopwatch(timing, "coarse net"):
        probabilities = segmenter.coarse.probabilities(slices, image)
    with Stopwatch(timing, "component + box"):
        boxes = propose_boxes(probabilities, image.GetSpacing()[:2], segmenter.options)
    labels = np.zeros(slices.shape, dtype=np.uint8)
    if path == "merged":
        with Stopwatch(timing, "encoder"):  # encoder and decoder together: tiles are decoded in the merged frame
            labels = segment_merged(engine, slices, boxes)
        timing.seconds["decoder"] = 0.0
    else:
        with Stopwatch(timing, "encoder"):
            if path == "naive":
                embeddings = dict(enumerate(torch.cat([engine.encode(slices[index : index + 1]) for index in range(len(slices))])))
            else:
                indices = sorted(boxes)
                embeddings = dict(zip(indices, engine.encode(slices[indices]))) if indices else {}
        with Stopwatch(timing, "decoder"):
            for index, box in boxes.items():
                labels[index] = engine.decode(embeddings[index], Prompt(box=box.as_tuple()), slices.shape[1:])
    with Stopwatch(timing, "write"):
        write_image(label_image(labels, image), folder / f"{case.name}_{path}.nii.gz")
    timing.dice = dice_score(labels, reference)
    return timing, labels


def resegment_milliseconds(segmenter: ProstateSegmenter, case: Case) -> float:
    """Median time to re-segment one slice after its box moved (embedding cached, decoder only)."""
    image, _ = case.read()
    volume = segmenter.prepare(image)
    boxes = segmenter.propose_boxes(volume)
    index, box = sorted(boxes.items())[len(boxes) // 2]
    volume.encoded.encode([index])
    times = []
    for shift in range(1, RESEGMENT_REPEATS + 1):
        moved = Box(box.x0 + shift, box.y0, box.x1 + shift, box.y1)
        started = time.perf_counter()
        volume.encoded.segment(index, Prompt(box=moved.as_tuple()))
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def wait_after_review(segmenter: ProstateSegmenter, case: Case, background: bool) -> float:
    """Seconds from Segment to labels when the user checked the proposed boxes for REVIEW_SECONDS,
    with the boxed slices encoding in the background meanwhile or not."""
    image, _ = case.read()
    volume = segmenter.prepare(image)
    boxes = segmenter.propose_boxes(volume)
    if background:
        volume.encoded.encode_in_background(sorted(boxes))
    time.sleep(REVIEW_SECONDS)
    started = time.perf_counter()
    segmenter.segment_with_boxes(volume, boxes)
    waited = time.perf_counter() - started
    volume.encoded.stop_background()  # nothing may encode on while the next measurement runs
    return waited


def _median_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def python_bfs_boxes(mask: np.ndarray) -> dict[int, Box]:
    """The papers' mask filter in pure Python: per slice, the largest 4-connected component by BFS, then its box."""
    boxes = {}
    for index, plane in enumerate(mask.tolist()):
        height, width = len(plane), len(plane[0])
        seen = [[False] * width for _ in range(height)]
        best: list[tuple[int, int]] = []
        for row in range(height):
            for column in range(width):
                if plane[row][column] and not seen[row][column]:
                    component, queue = [], deque([(row, column)])
                    seen[row][column] = True
                    while queue:
                        y, x = queue.popleft()
                        component.append((y, x))
                        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                            if 0 <= ny < height and 0 <= nx < width and plane[ny][nx] and not seen[ny][nx]:
                                seen[ny][nx] = True
                                queue.append((ny, nx))
                    if len(component) > len(best):
                        best = component
        if best:
            rows, columns = zip(*best)
            boxes[index] = Box(float(min(columns)), float(min(rows)), float(max(columns)), float(max(rows)))
    return boxes


def box_proposal_speedup(segmenter: ProstateSegmenter, case: Case) -> tuple[float, float, bool]:
    """(ours ms, Python BFS ms, same boxes) for the per-slice largest-component filter on one volume."""
    from .boxes import ComponentFilter, ProposalOptions

    image, _ = case.read()
    probabilities = segmenter.coarse.probabilities(normalised_array(image), image)
    options = ProposalOptions(component_filter=ComponentFilter.SLICE, margin_mm=0.0)
    ours_ms = _median_ms(lambda: propose_boxes(probabilities, image.GetSpacing()[:2], options), repeats=BOX_REPEATS)
    ours = propose_boxes(probabilities, image.GetSpacing()[:2], options)
    started = time.perf_counter()
    reference = python_bfs_boxes(probabilities > options.threshold)
    python_ms = 1000 * (time.perf_counter() - started)
    same = ours.keys() == reference.keys() and all(np.allclose(ours[i].as_tuple(), reference[i].as_tuple()) for i in ours)
    return ours_ms, python_ms, same


def encoder_levers(segmenter: ProstateSegmenter, case: Case, plain: SamEngine, count: int = 8) -> list[tuple[str, float, float]]:
    """(variant, ms per slice, max |embedding - plain batch-1 fp32 embedding|) for ways of running the encoder."""
    fast = segmenter.sam
    image, _ = case.read()
    slices = normalised_array(image)[:count]

    def timed(engine: SamEngine, batch_size: int, bf16: bool = False) -> tuple[float, torch.Tensor]:
        with _settings(engine, batch_size=batch_size, bf16=bf16):
            started = time.perf_counter()
            embeddings = engine.encode(slices)
            return 1000 * (time.perf_counter() - started) / len(slices), embeddings

    baseline_ms, baseline = timed(plain, 1)
    rows = [("plain fp32, batch 1 (naive)", baseline_ms, 0.0)]
    for name, batch_size, bf16 in (
        ("fast fp32, batch 1 (CPU)", 1, False),
        ("fast fp32, batch 4 (GPU)", 4, False),
        ("fast, bf16 autocast, batch 1 (CPU with native bfloat16)", 1, True),
    ):
        ms, embeddings = timed(fast, batch_size, bf16)
        rows.append((name, ms, (embeddings - baseline).abs().max().item()))
    return rows


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, Python {sys.version.split()[0]}, torch {torch.__version__}"


def benchmark(segmenter: ProstateSegmenter, cases: list[Case], log=print) -> str:
    """Run every path on every case (a warm-up first) and return the report as Markdown."""
    timings: dict[str, list[VolumeTiming]] = {path: [] for path in PATHS}
    plain = plain_engine(segmenter)
    with tempfile.TemporaryDirectory() as folder:
        for path in ("naive", "fp32", "bf16"):  # warm-up: first-call allocations are not timed
            run_path(segmenter, cases[0], path, Path(folder), plain)
        for case in cases:
            for path in PATHS:
                timing, _ = run_path(segmenter, case, path, Path(folder), plain)
                timings[path].append(timing)
                log(f"{case.name} {path}: {timing.total:.1f} s, Dice {timing.dice:.4f}")
    resegment = resegment_milliseconds(segmenter, cases[0])
    waits = {background: wait_after_review(segmenter, cases[0], background) for background in (False, True)}
    ours_ms, python_ms, same_boxes = box_proposal_speedup(segmenter, cases[0])
    levers = encoder_levers(segmenter, cases[0], plain)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = f"{segmenter.sam.device}, default precision here {'bf16' if segmenter.sam.bf16 else 'fp32'}"
    report = _report(timings, resegment, waits, ours_ms, python_ms, same_boxes, peak_mb, device)
    lever_lines = ["", "| Encoder variant | ms per slice | max abs. embedding difference |", "|---|---|---|"]
    lever_lines += [f"| {name} | {ms:.0f} | {difference:.2g} |" for name, ms, difference in levers]
    return report + "\n".join(lever_lines)


def _report(timings, resegment_ms, waits, ours_ms, python_ms, same_boxes, peak_mb, device) -> str:
    def median(path: str, stage: str | None = None, per_slice: bool = False) -> float:
        values = [(t.seconds[stage] if stage else t.total) / (t.slices if per_slice else 1) for t in timings[path]]
        return statistics.median(values)

    lines = [
        f"Machine: {machine()}, device {device}; {len(timings['naive'])} volumes, median per volume (per slice).",
        "",
        "| Stage | " + " | ".join(PATHS) + " |",
        "|---" * (len(PATHS) + 1) + "|",
    ]
    for stage in STAGES:
        cells = [f"{median(path, stage):.2f} s ({1000 * median(path, stage, True):.0f} ms)" for path in PATHS]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{median(path):.2f} s**" for path in PATHS) + " |")
    lines.append("| mean Dice | " + " | ".join(f"{np.mean([t.dice for t in timings[path]]):.4f}" for path in PATHS) + " |")
    lines.append("| speed-up vs naive | " + " | ".join(f"{median('naive') / median(path):.2f}×" for path in PATHS) + " |")
    lines.append("| volumes per minute | " + " | ".join(f"{60 / median(path):.2f}" for path in PATHS) + " |")
    lines += [
        "",
        f"- Re-segment one slice after a box edit (cached embedding, decoder only): median {resegment_ms:.0f} ms",
        f"- Wait from Segment to labels after a {REVIEW_SECONDS:.0f} s box review: {waits[False]:.1f} s, or {waits[True]:.1f} s with the "
        f"boxed slices encoding in the background during the review ({waits[False] / waits[True]:.1f}×)",
        f"- Box proposal, per-slice largest component + box: {ours_ms:.1f} ms vs pure-Python BFS {python_ms:.0f} ms "
        f"({python_ms / max(ours_ms, 1e-6):.0f}×), same boxes: {'yes' if same_boxes else 'NO'}",
        f"- Peak memory (resident, whole run): {peak_mb:.0f} MB",
        "",
    ]
    return "\n".join(lines)

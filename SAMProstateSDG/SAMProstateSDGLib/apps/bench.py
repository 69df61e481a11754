"""``samprostate bench``: where the time goes, and how much faster than the naive path we are.

Each volume runs several ways in the same process, on the same loaded models, in interleaved
order (every path once per volume, volume after volume), so that ratios hold on a busy machine:

- naive: every slice encoded alone at full size by the plain torch fp32 encoder (batch 1, no
  cache), then one decode per box;
- one path per encoder backend × precision that runs here (``backends.candidates``: torch fp32
  and bf16, OpenVINO fp32 and bf16, ONNX Runtime fp32): only slices with a box are encoded, by
  the fast encoder (batch norms folded, channels-last) or its exported graph, and cached;
- merged: SAMMed's four-slice merge on gland crops (``--merge-slices``, torch fp32).

Per stage it reports the median time per volume and per slice, the Dice of each path, the time to
re-segment one slice after a box edit, the wait after a box review while the boxed slices encode
in the background, box proposal against a pure-Python BFS mask filter, the ``segment`` command as
a whole process (cold: a new process loading the models; warm: the same volume again in this
process), model loading, peak memory and throughput. ``parity`` compares the Dice of every
backend × precision with torch fp32 case by case.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.catalog import INTERACTIVE_KIND, catalog, default_entry
from ..io.dataset import Case
from ..io.volume_io import label_image, normalised_array, read_volume, write_image
from ..masks.boxes import Box, propose_boxes
from ..masks.clicks import Click
from ..masks.metrics import dice_score
from ..modeling.backends import Candidate, EncoderBackend, TorchEncoder, build_backend, candidates
from ..modeling.interactive import InteractiveDecoder, InteractiveEngine, SliceClicks
from ..modeling.sam_engine import Prompt, SamEngine, load_sam
from ..modeling.tiling import segment_merged
from ..pipeline.localisation import coarse_probabilities
from ..pipeline.segmenter import ProstateSegmenter

STAGES = ("read", "normalise", "coarse net", "component + box", "encoder", "decoder", "write")
DICE_TOLERANCE = 0.005  # mean Dice of a backend × precision within this of torch fp32 ...
CASE_TOLERANCE = 0.01  # ... and no case moving by more: then "auto" may use it
PARITY_SPLITS = ("source-extra", "unseen")  # the 12 non-training cases
RESEGMENT_REPEATS = 10
REVIEW_SECONDS = 10.0  # default: how long the user looks at the proposed boxes before pressing Segment
ENCODER_ROUNDS = 3  # default: interleaved rounds of the encoder variants (the median round counts)
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


def encoder_backends(segmenter: ProstateSegmenter, wanted: list[Candidate]) -> dict[str, EncoderBackend]:
    """Each wanted backend × precision, built (or loaded from the export cache) on the segmenter's encoder."""
    return {candidate.label: build_backend(candidate, segmenter.sam.sam.image_encoder) for candidate in wanted}


def run_path(
    segmenter: ProstateSegmenter, case: Case, path: str, folder: Path, plain: SamEngine, encoders: dict[str, EncoderBackend] | None = None
) -> tuple[VolumeTiming, np.ndarray]:
    """One volume through one path, stage by stage; returns its timing and labels.

    ``path`` is "naive" (``plain``'s engine), "merged", or a label of ``encoders`` (default: torch fp32 and bf16).
    """
    encoders = encoders or {"torch fp32": TorchEncoder(segmenter.sam.sam.image_encoder, "fp32"), "torch bf16": TorchEncoder(segmenter.sam.sam.image_encoder, "bf16")}
    if path == "naive":
        return _run_path(segmenter, plain, case, path, folder)
    encoder = encoders.get(path, encoders.get("torch fp32") or TorchEncoder(segmenter.sam.sam.image_encoder))
    with _settings(segmenter.sam, encoder_backend=encoder):
        return _run_path(segmenter, segmenter.sam, case, path, folder)


@contextmanager
def _settings(engine: SamEngine, **settings):
    """The engine with some attributes (batch_size, encoder_backend) changed for a measurement, then restored."""
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
    with Stopwatch(timing, "coarse net"):  # with the levers segment uses (reorientation, the slice-order check)
        probabilities = coarse_probabilities(segmenter.coarse, image, segmenter.coarse_options, slices)
    with Stopwatch(timing, "component + box"):
        boxes = propose_boxes(probabilities, image.GetSpacing()[:2], segmenter.options)
    labels = np.zeros(slices.shape, dtype=np.uint8)
    if path == "merged":
        with Stopwatch(timing, "encoder"):  # encoder and decoder together: tiles are decoded in the merged frame
            labels = segment_merged(engine, slices, boxes)[0]
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
        write_image(label_image(labels, image), folder / f"{case.name}_{path.replace(' ', '_')}.nii.gz")
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


def click_update_milliseconds(segmenter: ProstateSegmenter, case: Case) -> float | None:
    """Median time of one click update with the shipped interactive decoder: box + the slice's clicks + its previous
    mask, cached embedding, decoder only (None when no interactive decoder is shipped)."""
    entry = next((entry for entry in catalog().values() if entry.kind == INTERACTIVE_KIND), None)
    if entry is None:
        return None
    refiner = InteractiveEngine(segmenter.sam, InteractiveDecoder.from_checkpoint(segmenter.sam.sam, entry.path, entry.sha256)).refiner
    image, reference = case.read()
    volume = segmenter.prepare(image)
    boxes = segmenter.propose_boxes(volume)
    index, box = sorted(boxes.items())[len(boxes) // 2]
    volume.encoded.encode([index])
    embedding, shape = volume.encoded.embeddings[index], reference.shape[1:]
    state = SliceClicks(box, (), refiner.refine(embedding, shape, SliceClicks(box)).logits)
    times = []
    for shift in range(RESEGMENT_REPEATS):
        click = Click((box.x0 + box.x1) / 2 + shift, (box.y0 + box.y1) / 2, shift % 2 == 0)
        started = time.perf_counter()
        refined = refiner.refine(embedding, shape, state.with_click(click))
        times.append(time.perf_counter() - started)
        state = replace(state.with_click(click), previous=refined.logits)
    return 1000 * statistics.median(times)


def wait_after_review(segmenter: ProstateSegmenter, case: Case, background: bool, review_seconds: float = REVIEW_SECONDS) -> float:
    """Seconds from Segment to labels when the user checked the proposed boxes for ``review_seconds``,
    with the boxed slices encoding in the background meanwhile or not."""
    image, _ = case.read()
    volume = segmenter.prepare(image)
    boxes = segmenter.propose_boxes(volume)
    if background:
        volume.encoded.encode_in_background(sorted(boxes))
    time.sleep(review_seconds)
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
    from ..masks.boxes import ComponentFilter, ProposalOptions

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


def encoder_levers(
    segmenter: ProstateSegmenter, case: Case, plain: SamEngine, encoders: dict[str, EncoderBackend], count: int = 2, rounds: int = ENCODER_ROUNDS
) -> list[tuple[str, float, float]]:
    """(variant, ms per slice, max |embedding - plain batch-1 fp32 embedding|) for ways of running the encoder.

    Variants are timed in interleaved rounds (ABAB…); the median round counts."""
    fast = segmenter.sam
    image, _ = case.read()
    slices = normalised_array(image)[:count]
    variants = [("plain torch fp32, batch 1 (naive)", plain, 1, plain.encoder_backend)]
    variants += [(f"{label}, batch 1", fast, 1, encoder) for label, encoder in encoders.items()]
    if "torch fp32" in encoders:
        variants.append(("torch fp32, batch 4 (GPU)", fast, 4, encoders["torch fp32"]))
    times: dict[str, list[float]] = {name: [] for name, *_ in variants}
    embeddings: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, engine, batch_size, encoder in variants:
            with _settings(engine, batch_size=batch_size, encoder_backend=encoder):
                started = time.perf_counter()
                embeddings[name] = engine.encode(slices)
                times[name].append(1000 * (time.perf_counter() - started) / len(slices))
    baseline = embeddings[variants[0][0]]
    return [(name, statistics.median(times[name]), (embeddings[name] - baseline).abs().max().item()) for name, *_ in variants]


def segment_process(case: Case, folder: Path, backend: str, precision: str) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of ``samprostate segment`` on one volume as a new process (cold start)."""
    output = folder / f"{case.name}_process.nii.gz"
    command = [sys.executable, "-m", "SAMProstateSDGLib.apps.cli", "segment", str(case.image), "-o", str(output), "--overwrite",
               "--device", "cpu", "--backend", backend, "--precision", precision]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    peak_mb = run_with_peak_memory(command, environment)
    return time.perf_counter() - started, peak_mb


# Run by a fresh, small Python process: runs its arguments as a command and prints that child's peak ru_maxrss.
PEAK_LAUNCHER = """
import subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
try:
    import resource
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
except ImportError:
    print("nan")
sys.exit(code)
"""


def run_with_peak_memory(command: list[str], environment: dict[str, str] | None = None) -> float:
    """Run ``command`` (an error if it fails) and return its own peak resident memory in MB (nan on Windows).

    Not this process's RUSAGE_CHILDREN: Linux keeps a process's high-water mark across exec, so a
    child of this large process would report at least this process's peak at the spawn. The command
    runs under a small launcher (``PEAK_LAUNCHER``) instead, which reports its one child's peak."""
    launched = subprocess.run([sys.executable, "-c", PEAK_LAUNCHER, *command], check=True, capture_output=True, text=True, env=environment)
    return resident_mb(float(launched.stdout.split()[-1]))


def peak_resident_mb(platform: str = sys.platform) -> float:
    """Peak resident memory in MB of this process; nan where the ``resource`` module does not exist (Windows)."""
    try:
        import resource
    except ImportError:
        return math.nan
    return resident_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, platform)


def resident_mb(max_rss: float, platform: str = sys.platform) -> float:
    """``ru_maxrss`` in MB: it is in kB on Linux, in bytes on macOS."""
    return max_rss / 2**20 if platform == "darwin" else max_rss / 1024


def warm_segment_seconds(segmenter: ProstateSegmenter, case: Case, folder: Path) -> float:
    """Seconds to segment one volume (read to write) with the models already loaded, as a batch does."""
    started = time.perf_counter()
    image = read_volume(case.image)
    volume = segmenter.prepare(image)
    labels = segmenter.segment_with_boxes(volume, segmenter.propose_boxes(volume))
    write_image(label_image(labels, image), folder / f"{case.name}_warm.nii.gz")
    return time.perf_counter() - started


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, Python {sys.version.split()[0]}, torch {torch.__version__}"


def benchmark(
    segmenter: ProstateSegmenter, cases: list[Case], wanted: list[Candidate] | None = None, load_seconds: float = 0.0,
    backend: str = "auto", precision: str = "auto", log=print, review_seconds: float = REVIEW_SECONDS, rounds: int = ENCODER_ROUNDS,
) -> tuple[str, dict]:
    """Run every path on every case (a warm-up first) and return the report as Markdown and as JSON data.

    ``segmenter`` runs the backend "auto" chose (its load took ``load_seconds``); ``wanted``: the
    backend × precision paths to time (default: every candidate here); ``review_seconds``: how long the user is taken
    to look at the proposed boxes before pressing Segment; ``rounds``: interleaved rounds of the encoder variants."""
    encoders = encoder_backends(segmenter, wanted or candidates(device=segmenter.sam.device))
    paths = ["naive", *encoders, "merged"]
    timings: dict[str, list[VolumeTiming]] = {path: [] for path in paths}
    plain = plain_engine(segmenter)
    with tempfile.TemporaryDirectory() as folder:
        warm_up = normalised_array(read_volume(cases[0].image))[:1]
        for engine, encoder in [(plain, plain.encoder_backend), *[(segmenter.sam, encoder) for encoder in encoders.values()]]:
            with _settings(engine, encoder_backend=encoder):  # first-call allocations are not timed
                engine.encode(warm_up)
        for case in cases:
            for path in paths:
                timing, _ = run_path(segmenter, case, path, Path(folder), plain, encoders)
                timings[path].append(timing)
                log(f"{case.name} {path}: {timing.total:.1f} s, Dice {timing.dice:.4f}")
        cold_seconds, process_mb = segment_process(cases[0], Path(folder), backend, precision)
        warm_seconds = warm_segment_seconds(segmenter, cases[0], Path(folder))
    resegment = resegment_milliseconds(segmenter, cases[0])
    click_ms = click_update_milliseconds(segmenter, cases[0])
    waits = {background: wait_after_review(segmenter, cases[0], background, review_seconds) for background in (False, True)}
    ours_ms, python_ms, same_boxes = box_proposal_speedup(segmenter, cases[0])
    levers = encoder_levers(segmenter, cases[0], plain, encoders, rounds=rounds)
    peak_mb = peak_resident_mb()
    process = {"cold_seconds": cold_seconds, "warm_seconds": warm_seconds, "load_seconds": load_seconds, "process_peak_mb": process_mb}
    data = {
        "machine": machine(),
        "device": str(segmenter.sam.device),
        "backend": backend,
        "precision": precision,
        "chosen": segmenter.sam.encoder_backend.label,
        "cases": [case.name for case in cases],
        "paths": {path: [{"slices": t.slices, "seconds": t.seconds, "total": t.total, "dice": t.dice} for t in timings[path]] for path in paths},
        "resegment_ms": resegment,
        "click_update_ms": click_ms,
        "wait_after_review_s": {"review": review_seconds, "foreground": waits[False], "background": waits[True]},
        "box_proposal_ms": {"ours": ours_ms, "python_bfs": python_ms, "same_boxes": same_boxes},
        "encoder_variants": [{"name": name, "ms_per_slice": ms, "max_embedding_difference": d} for name, ms, d in levers],
        "peak_mb": peak_mb,
        "segment_process": process,
    }
    return markdown_report(data), data


def markdown_report(data: dict) -> str:
    """The report of a ``bench`` run, rendered from its JSON data (``bench --output NAME.md`` writes NAME.json beside it).

    Files written before ``backend``, ``precision``, ``click_update_ms`` and the review time were recorded ran with the defaults (auto, a
    REVIEW_SECONDS review) and no click timing."""
    timings = {path: [VolumeTiming(run["slices"], run["seconds"], run["dice"]) for run in runs] for path, runs in data["paths"].items()}
    device = f"{data['device']}, --backend {data.get('backend', 'auto')} --precision {data.get('precision', 'auto')} chose {data['chosen']}"
    waits = {False: data["wait_after_review_s"]["foreground"], True: data["wait_after_review_s"]["background"]}
    boxes = data["box_proposal_ms"]
    report = _report(timings, data["resegment_ms"], waits, boxes["ours"], boxes["python_bfs"], boxes["same_boxes"], data["peak_mb"], device,
                     data["segment_process"], data["machine"], data["wait_after_review_s"].get("review", REVIEW_SECONDS))
    if data.get("click_update_ms") is not None:
        report += ("- One click with the interactive decoder (box + the slice's clicks + its previous mask; cached embedding, decoder only): "
                   f"median {data['click_update_ms']:.0f} ms\n")
    lever_lines = ["", "| Encoder variant | ms per slice | max abs. embedding difference |", "|---|---|---|"]
    lever_lines += [f"| {lever['name']} | {lever['ms_per_slice']:.0f} | {lever['max_embedding_difference']:.2g} |" for lever in data["encoder_variants"]]
    return report + "\n".join(lever_lines)


def _report(
    timings, resegment_ms, waits, ours_ms, python_ms, same_boxes, peak_mb, device, process=None, machine_text: str | None = None,
    review_seconds: float = REVIEW_SECONDS,
) -> str:
    paths = list(timings)

    def median(path: str, stage: str | None = None, per_slice: bool = False) -> float:
        values = [(t.seconds[stage] if stage else t.total) / (t.slices if per_slice else 1) for t in timings[path]]
        return statistics.median(values)

    lines = [
        f"Machine: {machine_text or machine()}, device {device}; {len(timings['naive'])} volumes, median per volume (per slice).",
        "",
        "| Stage | " + " | ".join(paths) + " |",
        "|---" * (len(paths) + 1) + "|",
    ]
    for stage in STAGES:
        cells = [f"{median(path, stage):.2f} s ({1000 * median(path, stage, True):.0f} ms)" for path in paths]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{median(path):.2f} s**" for path in paths) + " |")
    lines.append("| mean Dice | " + " | ".join(f"{np.mean([t.dice for t in timings[path]]):.4f}" for path in paths) + " |")
    lines.append("| speed-up vs naive | " + " | ".join(f"{median('naive') / median(path):.2f}×" for path in paths) + " |")
    lines.append("| volumes per minute | " + " | ".join(f"{60 / median(path):.2f}" for path in paths) + " |")
    lines += [
        "",
        f"- Re-segment one slice after a box edit (cached embedding, decoder only): median {resegment_ms:.0f} ms",
        f"- Wait from Segment to labels after a {review_seconds:g} s box review: {waits[False]:.1f} s, or {waits[True]:.1f} s with the "
        f"boxed slices encoding in the background during the review ({waits[False] / waits[True]:.1f}×)",
        f"- Box proposal, per-slice largest component + box: {ours_ms:.1f} ms vs pure-Python BFS {python_ms:.0f} ms "
        f"({python_ms / max(ours_ms, 1e-6):.0f}×), same boxes: {'yes' if same_boxes else 'NO'}",
    ]
    if process:
        lines += [
            f"- `segment` as a new process (cold: start-up, imports, model and backend loading, one volume): {process['cold_seconds']:.1f} s; "
            f"the same volume with the models loaded (warm): {process['warm_seconds']:.1f} s; cold / warm {process['cold_seconds'] / process['warm_seconds']:.2f}×; "
            f"peak memory of that process {process['process_peak_mb']:.0f} MB",
            f"- Model loading in this process (coarse net, SAM, encoder backend choice): {process['load_seconds']:.1f} s",
        ]
    lines += [f"- Peak memory (resident, whole benchmark run): {peak_mb:.0f} MB", ""]
    return "\n".join(lines)


def parity(segmenter: ProstateSegmenter, cases: list[Case], wanted: list[Candidate], log=print) -> tuple[str, dict]:
    """Dice of each backend × precision against torch fp32, case by case, on the same coarse boxes.

    A pair passes when its mean Dice is within DICE_TOLERANCE of torch fp32's and no case moves
    by more than CASE_TOLERANCE. Returns Markdown and JSON data."""
    reference = Candidate("torch", "fp32")
    encoders = encoder_backends(segmenter, [reference, *[option for option in wanted if option != reference]])
    dice: dict[str, dict[str, float]] = {label: {} for label in encoders}
    for case in cases:
        image, truth = case.read()
        volume = segmenter.prepare(image)
        boxes = segmenter.propose_boxes(volume)
        indices = sorted(boxes)
        for label, encoder in encoders.items():
            with _settings(segmenter.sam, encoder_backend=encoder):
                embeddings = dict(zip(indices, segmenter.sam.encode(volume.normalised[indices]))) if indices else {}
                predicted = np.zeros(truth.shape, dtype=np.uint8)
                for index in indices:
                    predicted[index] = segmenter.sam.decode(embeddings[index], Prompt(box=boxes[index].as_tuple()), truth.shape[1:])
            dice[label][case.name] = dice_score(predicted, truth)
            log(f"{case.name} {label}: Dice {dice[label][case.name]:.4f}")
    base = dice[reference.label]
    summary = {}
    for label, scores in dice.items():
        moves = [scores[name] - base[name] for name in base]
        mean_move = float(np.mean(moves))
        summary[label] = {"mean_dice": float(np.mean(list(scores.values()))), "mean_difference": mean_move,
                          "largest_case_move": float(max(abs(move) for move in moves)),
                          "passes": abs(mean_move) <= DICE_TOLERANCE and max(abs(move) for move in moves) <= CASE_TOLERANCE}
    data = {"machine": machine(), "cases": [case.name for case in cases], "dice": dice, "summary": summary}
    return parity_markdown(data), data


def parity_markdown(data: dict) -> str:
    """The parity table of ``parity``'s JSON data: each case's Dice per backend × precision, the mean and the verdict."""
    dice, summary, reference = data["dice"], data["summary"], Candidate("torch", "fp32").label
    base, labels = dice[reference], list(dice)
    lines = [f"Machine: {data['machine']}; Dice of the box-prompted LiteMedSAM masks (whole gland) per encoder backend × precision, same coarse boxes.", "",
             "| Case | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name in data["cases"]:
        cells = [f"{dice[label][name]:.4f}" + ("" if label == reference else f" ({dice[label][name] - base[name]:+.4f})") for label in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{summary[label]['mean_dice']:.4f}** ({summary[label]['mean_difference']:+.4f})" for label in labels) + " |")
    lines.append("| largest case move | " + " | ".join(f"{summary[label]['largest_case_move']:.4f}" for label in labels) + " |")
    lines.append(f"| parity (mean within {DICE_TOLERANCE}, every case within {CASE_TOLERANCE}) | "
                 + " | ".join("yes" if summary[label]["passes"] else "**NO**" for label in labels) + " |")
    return "\n".join(lines) + "\n"

"""A fast proxy for the coarse network under acquisition shift (no SAM): Dice and box placement.

Usage: python scripts/coarse_shift_proxy.py --data ../shared/data/prostate \
           --checkpoint shipped=PATH --checkpoint dg=PATH [--output proxy.md] [--json proxy.json]

Every checkpoint is scored the same way on the 10 source-extra cases, clean and under generic
shifts built here (seeded; written for this proxy, not the evaluation suite's shift models, and
never used in training), and on the unseen cases clean. Per case: the coarse Dice (p > 0.75, the
largest 3D component) and the share of gland slices whose proposed box (the default proposal:
3D component, 3 mm margin) has its centre inside the reference gland; a gland slice without a box
counts as a miss.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.io.volume_io import normalised_array
from SAMProstateSDGLib.masks.boxes import COARSE_THRESHOLD, largest_component, propose_boxes
from SAMProstateSDGLib.modeling.coarse_net import CoarseSegmenter

Shift = Callable[[sitk.Image, np.ndarray, int], tuple[sitk.Image, np.ndarray]]


def _with_array(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    shifted = sitk.GetImageFromArray(array.astype(np.float32))
    shifted.CopyInformation(image)
    return shifted


def _physical_grid(image: sitk.Image) -> np.ndarray:
    """Physical coordinates (mm) of every voxel, [slices, rows, columns, xyz]."""
    axes = np.array(image.GetDirection()).reshape(3, 3).T * np.array(image.GetSpacing())[:, None]  # row i: one step along index axis i
    x, y, z = (np.arange(n, dtype=np.float32)[:, None] * axes[i].astype(np.float32) for i, n in enumerate(image.GetSize()))
    return np.array(image.GetOrigin(), dtype=np.float32) + z[:, None, None] + y[None, :, None] + x[None, None, :]


def smooth_bias_field(image: sitk.Image, mask: np.ndarray, seed: int) -> tuple[sitk.Image, np.ndarray]:
    """A strong smooth multiplicative field: five Gaussian blobs (40-90 mm wide) of log-gain +-1.2 at random places."""
    rng = np.random.default_rng(seed)
    points = _physical_grid(image)
    centre, extent = points.reshape(-1, 3).mean(0), np.ptp(points.reshape(-1, 3), 0)
    log_gain = np.zeros(mask.shape)
    for _ in range(5):
        middle = centre + rng.uniform(-0.5, 0.5, 3) * extent
        width = rng.uniform(40, 90)
        log_gain += rng.uniform(-1.2, 1.2) * np.exp(-np.sum((points - middle) ** 2, -1) / (2 * width**2))
    return _with_array(image, sitk.GetArrayFromImage(image) * np.exp(log_gain)), mask


def posterior_peaked_field(image: sitk.Image, mask: np.ndarray, seed: int) -> tuple[sitk.Image, np.ndarray]:
    """Bright behind the gland, falling off over a few cm (a surface receiver in the rectum), saturated."""
    points = _physical_grid(image)
    gland = points[mask]
    coil = np.array([gland[:, 0].mean(), gland[:, 1].max() + 12.0])  # LPS: y grows towards posterior
    distance = np.hypot(points[..., 0] - coil[0], points[..., 1] - coil[1])
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    shifted = values * (0.25 + 4.0 * np.exp(-distance / 25.0))
    return _with_array(image, np.minimum(shifted, 1.5 * np.percentile(values, 99.5))), mask


def gamma(exponent: float) -> Shift:
    def shift(image: sitk.Image, mask: np.ndarray, seed: int) -> tuple[sitk.Image, np.ndarray]:
        values = sitk.GetArrayFromImage(image).astype(np.float32)
        top = values.max()
        return _with_array(image, top * (np.clip(values, 0, None) / top) ** exponent), mask

    return shift


def resampled(in_plane_mm: float, slice_mm: float | None = None) -> Shift:
    """The same anatomy on coarser pixels (and optionally other slice thickness); the mask by nearest neighbour."""

    def shift(image: sitk.Image, mask: np.ndarray, seed: int) -> tuple[sitk.Image, np.ndarray]:
        spacing = (in_plane_mm, in_plane_mm, slice_mm or image.GetSpacing()[2])
        size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
        grid = sitk.Image(size, sitk.sitkFloat32)
        grid.SetOrigin(image.GetOrigin())
        grid.SetDirection(image.GetDirection())
        grid.SetSpacing(spacing)
        label = sitk.GetImageFromArray(mask.astype(np.uint8))
        label.CopyInformation(image)
        moved = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
        moved_mask = sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return moved, sitk.GetArrayFromImage(moved_mask) > 0

    return shift


def identity_header(image: sitk.Image, mask: np.ndarray, seed: int) -> tuple[sitk.Image, np.ndarray]:
    shifted = sitk.Image(image)
    shifted.SetDirection(np.eye(3).ravel().tolist())
    shifted.SetOrigin((0.0, 0.0, 0.0))
    return shifted, mask


def flipped(axes: tuple[int, ...]) -> Shift:
    """Array axes flipped with the header kept: the slice reaches the network upside down or mirrored."""

    def shift(image: sitk.Image, mask: np.ndarray, seed: int) -> tuple[sitk.Image, np.ndarray]:
        values = np.flip(sitk.GetArrayFromImage(image), axes).copy()
        return _with_array(image, values), np.flip(mask, axes).copy()

    return shift


SHIFTS: dict[str, Shift | None] = {
    "clean": None,
    "bias field": smooth_bias_field,
    "posterior field": posterior_peaked_field,
    "gamma 0.5": gamma(0.5),
    "gamma 2": gamma(2.0),
    "1.1 mm pixels, 1.6 mm slices": resampled(1.1, 1.6),
    "identity header": identity_header,
    "flipped AP": flipped((1,)),
}


def measure(segmenter: CoarseSegmenter, image: sitk.Image, mask: np.ndarray) -> tuple[float, float]:
    """(coarse Dice of the largest 3D component, share of gland slices whose box centre lies in the gland)."""
    probabilities = segmenter.probabilities(normalised_array(image), image)
    component = largest_component(probabilities > COARSE_THRESHOLD)
    dice = 2 * np.logical_and(component, mask).sum() / max(component.sum() + mask.sum(), 1)
    boxes = propose_boxes(probabilities, image.GetSpacing()[:2])
    gland_slices = np.flatnonzero(mask.any(axis=(1, 2)))
    hits = 0
    for index in gland_slices:
        box = boxes.get(int(index))
        if box is not None:
            hits += bool(mask[index, int(round((box.y0 + box.y1) / 2)), int(round((box.x0 + box.x1) / 2))])
    return float(dice), hits / max(len(gland_slices), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", action="append", required=True, help="LABEL=PATH, repeatable")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    parser.add_argument("--json", type=Path, help="per-case figures as JSON")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and SimpleITK")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(arguments.threads)
    models = {label: CoarseSegmenter.from_checkpoint(path, torch.device("cpu")) for label, path in (item.split("=", 1) for item in arguments.checkpoint)}
    extra, unseen = find_cases(arguments.data, split="source-extra"), find_cases(arguments.data, split="unseen")
    results: dict[str, dict[str, dict[str, tuple[float, float]]]] = {label: {} for label in models}
    for seed, case in enumerate(extra + unseen):
        image, labels = case.read()
        for shift_name, shift in SHIFTS.items():
            if case in unseen and shift is not None:
                continue
            shifted, mask = shift(image, labels > 0, seed) if shift else (image, labels > 0)
            row = f"{'unseen ' if case in unseen else ''}{shift_name}"
            for label, segmenter in models.items():
                results[label].setdefault(row, {})[case.name] = measure(segmenter, shifted, mask)
        print(f"{case.name} done", flush=True)
    lines = ["| cases, shift | " + " | ".join(f"{label}: Dice mean / min / box-centre share" for label in models) + " |"]
    lines.append("|---|" + "---|" * len(models))
    for row in results[next(iter(models))]:
        cells = []
        for label in models:
            values = np.array(list(results[label][row].values()))
            cells.append(f"{values[:, 0].mean():.3f} / {values[:, 0].min():.3f} / {values[:, 1].mean():.2f}")
        lines.append(f"| {'source-extra ' if not row.startswith('unseen') else ''}{row} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if arguments.output:
        arguments.output.write_text(table + "\n")
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""SAMMed's 2×2 merge: four slices share one encoder input, and prompts and masks move with their tile.

Tile ``t`` of a group sits at row ``i = t // 2`` and column ``j = t % 2`` of the merged image,
so a point or box on that slice shifts by ``x + j·W`` and ``y + i·H`` (W, H: slice width and
height). SAMMed's published code swaps the offsets of the two off-diagonal tiles; this does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..masks.boxes import Box
from ..masks.z_smoothing import NO_SMOOTHING, smoothed_logits
from .sam_engine import Prompt, SamEngine

if TYPE_CHECKING:
    import torch

GRID = 2
TILES = GRID * GRID


def tile_offset(tile: int, height: int, width: int) -> tuple[int, int]:
    """(x, y) shift of tile ``tile`` in the merged image."""
    row, column = divmod(tile, GRID)
    return column * width, row * height


def merge_slices(slices: np.ndarray) -> np.ndarray:
    """Up to four [rows, columns] slices into one [2·rows, 2·columns] image (missing tiles are zero)."""
    count, height, width = slices.shape
    if count > TILES:
        raise ValueError(f"at most {TILES} slices merge into one image, got {count}")
    merged = np.zeros((GRID * height, GRID * width), dtype=slices.dtype)
    for tile in range(count):
        x, y = tile_offset(tile, height, width)
        merged[y : y + height, x : x + width] = slices[tile]
    return merged


def shift_prompt(prompt: Prompt, tile: int, height: int, width: int) -> Prompt:
    x, y = tile_offset(tile, height, width)
    box = None if prompt.box is None else (prompt.box[0] + x, prompt.box[1] + y, prompt.box[2] + x, prompt.box[3] + y)
    points = tuple((px + x, py + y) for px, py in prompt.points)
    return Prompt(box=box, points=points, point_labels=prompt.point_labels)


def tile_of(merged: np.ndarray, tile: int, height: int, width: int) -> np.ndarray:
    x, y = tile_offset(tile, height, width)
    return merged[y : y + height, x : x + width]


class TiledEncodedVolume:
    """Like ``EncodedVolume``, but slices 4g … 4g+3 share the embedding of their merged image."""

    def __init__(self, engine: SamEngine, slices: np.ndarray):
        self.engine = engine
        self.slices = slices
        self.embeddings: dict[int, torch.Tensor] = {}

    def encode(self, indices) -> None:
        groups = sorted({int(index) // TILES for index in indices} - self.embeddings.keys())
        if groups:
            merged = np.stack([merge_slices(self.slices[group * TILES : (group + 1) * TILES]) for group in groups])
            self.embeddings.update(zip(groups, self.engine.encode(merged)))

    def segment_logits(self, index: int, prompt: Prompt) -> tuple[np.ndarray, float]:
        """The slice's mask logits (its tile of the merged image's) and SAM's predicted IoU of its mask."""
        group, tile = divmod(int(index), TILES)
        self.encode([index])
        height, width = self.slices.shape[1:]
        merged, score = self.engine.decode_logits(self.embeddings[group], shift_prompt(prompt, tile, height, width), (GRID * height, GRID * width))
        return tile_of(merged, tile, height, width), score


def gland_crop(boxes: dict[int, Box], shape: tuple[int, int], margin: float) -> tuple[slice, slice]:
    """Rows and columns of the union of the boxes, widened by ``margin`` pixels, inside the slice."""
    x0 = int(max(min(box.x0 for box in boxes.values()) - margin, 0))
    y0 = int(max(min(box.y0 for box in boxes.values()) - margin, 0))
    x1 = int(min(max(box.x1 for box in boxes.values()) + margin, shape[1] - 1)) + 1
    y1 = int(min(max(box.y1 for box in boxes.values()) + margin, shape[0] - 1)) + 1
    return slice(y0, y1), slice(x0, x1)


def segment_merged(
    engine: SamEngine, slices: np.ndarray, boxes: dict[int, Box], margin: float = 16.0, weights: Mapping[int, float] = NO_SMOOTHING
) -> tuple[np.ndarray, dict[int, float]]:
    """Box masks with four gland crops per encoder input: about four times fewer encoder passes; returns the labels
    and SAM's predicted IoU per boxed slice.

    Each slice is cropped to the union of the boxes (plus ``margin`` pixels), so a tile of the
    merged input keeps about the pixel size the whole slice would have had alone. The logits are
    smoothed along the slices with ``weights`` (``masks.z_smoothing.neighbour_weights``) before the threshold.
    """
    labels = np.zeros(slices.shape, dtype=np.uint8)
    predicted_iou: dict[int, float] = {}
    if not boxes:
        return labels, predicted_iou
    rows, columns = gland_crop(boxes, slices.shape[1:], margin)
    tiled = TiledEncodedVolume(engine, np.ascontiguousarray(slices[:, rows, columns]))
    tiled.encode(boxes)
    logits: dict[int, np.ndarray] = {}
    for index, box in boxes.items():
        cropped = Box(box.x0 - columns.start, box.y0 - rows.start, box.x1 - columns.start, box.y1 - rows.start)
        logits[index], predicted_iou[index] = tiled.segment_logits(index, Prompt(box=cropped.as_tuple()))
    for index in boxes:
        labels[index, rows, columns] = smoothed_logits(logits, index, weights) > engine.sam.mask_threshold
    return labels, predicted_iou

"""A PNG contact sheet: several slices with the segmentation outline and the prompt boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..masks.boxes import Box

OUTLINE = (255, 64, 64)
BOX = (255, 220, 0)


def overlay_slices(labels: np.ndarray, boxes: dict[int, Box], count: int = 6) -> list[int]:
    """Up to ``count`` evenly spread slices that hold a mask or a box."""
    shown = sorted(set(np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1)).tolist()) | set(boxes))
    if len(shown) <= count:
        return shown
    return [shown[int(round(position))] for position in np.linspace(0, len(shown) - 1, count)]


def render_slice(normalised: np.ndarray, labels: np.ndarray, box: Box | None) -> Image.Image:
    grey = (normalised * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    mask = labels > 0
    rgb[mask & ~ndimage.binary_erosion(mask)] = OUTLINE
    picture = Image.fromarray(rgb)
    if box is not None:
        ImageDraw.Draw(picture).rectangle(box.as_tuple(), outline=BOX)
    return picture


def overlay_sheet(normalised: np.ndarray, labels: np.ndarray, boxes: dict[int, Box], columns: int = 3) -> Image.Image:
    """The contact sheet (slices in the image file's row/column order, not reoriented)."""
    indices = overlay_slices(labels, boxes) or [len(labels) // 2]
    tiles = [render_slice(normalised[index], labels[index], boxes.get(index)) for index in indices]
    height, width = normalised.shape[1:]
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (width * min(columns, len(tiles)), height * rows))
    for number, tile in enumerate(tiles):
        ImageDraw.Draw(tile).text((4, 4), f"slice {indices[number]}", fill=(255, 255, 255))
        sheet.paste(tile, ((number % columns) * width, (number // columns) * height))
    return sheet

"""The boxes file: proposed or edited boxes, per slice, in pixel and physical coordinates.

This JSON is the contract between the command line and the Slicer box editor; its schema is
documented in the README ("Box JSON"). Pixel boxes are authoritative when present; an entry
with only physical corners (``ras`` or ``lps``) is converted through the image geometry, so
oblique and flipped volumes are handled exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .boxes import Box
from .confidence import SliceConfidence
from .errors import InputError
from .files import write_text_atomically

FORMAT = "samprostate-boxes"
VERSION = 1
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def geometry(image: sitk.Image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def boxes_to_json(boxes: dict[int, Box], image: sitk.Image, confidences: dict[int, SliceConfidence] | None = None) -> dict:
    """The file's content; ``confidences`` adds an optional ``confidence`` object to each segmented slice's entry
    (``predicted_iou``, ``coarse_agreement``, ``flagged``), which readers of version 1 may ignore."""
    confidences = confidences or {}
    entries = []
    for index, box in sorted(boxes.items()):
        corners_lps = [
            list(image.TransformContinuousIndexToPhysicalPoint((x, y, float(index))))
            for x, y in ((box.x0, box.y0), (box.x1, box.y1))
        ]
        entries.append(
            {
                "slice": index,
                "pixel": [box.x0, box.y0, box.x1, box.y1],
                "lps": corners_lps,
                "ras": [(np.array(corner) * LPS_TO_RAS).tolist() for corner in corners_lps],
            }
        )
        if index in confidences:
            entries[-1]["confidence"] = confidences[index].to_json()
    return {
        "format": FORMAT,
        "version": VERSION,
        "image": geometry(image),
        "pixel": "x = column, y = row of slice k (0-based indices of the image file); [x0, y0, x1, y1] = first and last covered column and row",
        "physical": "millimetres; 'lps' as in ITK/DICOM, 'ras' as in Slicer; the two corners (x0, y0) and (x1, y1) on the slice's plane",
        "boxes": entries,
    }


def write_boxes(path: str | Path, boxes: dict[int, Box], image: sitk.Image, confidences: dict[int, SliceConfidence] | None = None) -> None:
    text = json.dumps(boxes_to_json(boxes, image, confidences), indent=1) + "\n"
    write_text_atomically(path, text)


def read_boxes(path: str | Path, image: sitk.Image) -> dict[int, Box]:
    """Boxes for ``image`` from a boxes file; refuses a file made for another volume size."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"boxes file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read boxes file {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise InputError(f"{path} is not a {FORMAT} version {VERSION} file")
    size = data.get("image", {}).get("size")
    if size is not None and list(size) != list(image.GetSize()):
        raise InputError(f"{path} was made for a volume of size {size}, the input is {list(image.GetSize())}")
    boxes: dict[int, Box] = {}
    for number, entry in enumerate(data.get("boxes", [])):
        try:
            index, box = _entry_box(entry, image)
        except (KeyError, TypeError, ValueError, IndexError):
            raise InputError(f"{path}: box {number} needs 'slice' and 'pixel', or 'ras'/'lps' corners") from None
        _check_inside(box, index, image, path)
        boxes[index] = box
    return boxes


def _entry_box(entry: dict, image: sitk.Image) -> tuple[int, Box]:
    if "pixel" in entry:
        x0, y0, x1, y1 = (float(value) for value in entry["pixel"])
        return int(entry["slice"]), Box(x0, y0, x1, y1)
    corners = np.array(entry["lps"] if "lps" in entry else np.array(entry["ras"]) * LPS_TO_RAS, dtype=float)
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(corner.tolist()) for corner in corners[:2]])
    index = int(round(indices[:, 2].mean()))
    if "slice" in entry and int(entry["slice"]) != index:
        raise ValueError("slice does not match the physical corners")
    (xa, ya, _), (xb, yb, _) = indices
    return index, Box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def _check_inside(box: Box, index: int, image: sitk.Image, path: Path) -> None:
    width, height, depth = image.GetSize()
    if not 0 <= index < depth:
        raise InputError(f"{path}: slice {index} is outside the volume (0..{depth - 1})")
    if not (box.x0 < box.x1 and box.y0 < box.y1):
        raise InputError(f"{path}: the box on slice {index} is empty or inverted: {box.as_tuple()}")
    if box.x1 < 0 or box.y1 < 0 or box.x0 > width - 1 or box.y0 > height - 1:
        raise InputError(f"{path}: the box on slice {index} lies outside the {width}x{height} slice")

"""The boxes file: proposed or edited boxes, and clicks (version 2), per slice, in pixel and physical coordinates.

This JSON is the contract between the command line and the Slicer box editor; its schema is
documented in the README ("Box JSON"). Pixel boxes are authoritative when present; an entry
with only physical corners (``ras`` or ``lps``) is converted through the image geometry, so
oblique and flipped volumes are handled exactly.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.files import json_text, write_text_atomically
from ..masks.boxes import Box
from ..masks.clicks import Click
from ..masks.confidence import SliceConfidence

FORMAT = "samprostate-boxes"
VERSION = 2  # 2: per-slice points; version 1 files (boxes only) are still read
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
SCHEMA_FILE = Path(__file__).with_name("boxes.schema.json")
GEOMETRY_TOLERANCE = 0.01  # a recorded spacing or origin within 1 % of a voxel, direction cosines within 0.01, are the input's


def geometry(image: sitk.Image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def boxes_to_json(
    boxes: dict[int, Box],
    image: sitk.Image,
    confidences: dict[int, SliceConfidence] | None = None,
    points: dict[int, tuple[Click, ...]] | None = None,
) -> dict:
    """The file's content; ``confidences`` adds an optional ``confidence`` object to each segmented slice's entry
    (``predicted_iou``, ``coarse_agreement``, ``relative_area``, ``flagged``) and lists the flagged slices without a box
    (``slices_to_check_without_box``), which readers may ignore; ``points`` the slices' clicks
    (``points`` [x, y, label] in pixels, ``points_lps`` and ``points_ras`` [x, y, z, label])."""
    confidences, points = confidences or {}, points or {}
    entries = []
    for index in sorted(boxes.keys() | points.keys()):
        entry: dict[str, Any] = {"slice": index}
        if index in boxes:
            box = boxes[index]
            corners_lps = [
                list(image.TransformContinuousIndexToPhysicalPoint((x, y, float(index))))
                for x, y in ((box.x0, box.y0), (box.x1, box.y1))
            ]
            entry.update(pixel=[box.x0, box.y0, box.x1, box.y1], lps=corners_lps, ras=[(np.array(corner) * LPS_TO_RAS).tolist() for corner in corners_lps])
        if points.get(index):
            clicks = points[index]
            physical = [list(image.TransformContinuousIndexToPhysicalPoint((click.x, click.y, float(index)))) for click in clicks]
            entry["points"] = [[click.x, click.y, click.label] for click in clicks]
            entry["points_lps"] = [[*point, click.label] for point, click in zip(physical, clicks)]
            entry["points_ras"] = [[*(np.array(point) * LPS_TO_RAS).tolist(), click.label] for point, click in zip(physical, clicks)]
        if index in confidences:
            entry["confidence"] = confidences[index].to_json()
        entries.append(entry)
    return {
        "format": FORMAT,
        "version": VERSION,
        "image": geometry(image),
        "pixel": "x = column, y = row of slice k (0-based indices of the image file); [x0, y0, x1, y1] = first and last covered column and row",
        "physical": "millimetres; 'lps' as in ITK/DICOM, 'ras' as in Slicer; the two corners (x0, y0) and (x1, y1) on the slice's plane",
        "boxes": entries,
        "slices_to_check_without_box": [
            {"slice": index, **confidence.to_json()} for index, confidence in confidences.items() if confidence.flagged and index not in boxes
        ],
    }


def boxes_text(
    boxes: dict[int, Box], image: sitk.Image, confidences: dict[int, SliceConfidence] | None = None, points: dict[int, tuple[Click, ...]] | None = None
) -> str:
    return json_text(boxes_to_json(boxes, image, confidences, points), indent=1)


def write_boxes(
    path: str | Path,
    boxes: dict[int, Box],
    image: sitk.Image,
    confidences: dict[int, SliceConfidence] | None = None,
    points: dict[int, tuple[Click, ...]] | None = None,
) -> None:
    write_text_atomically(path, boxes_text(boxes, image, confidences, points))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def validate_boxes_json(data, path: Path) -> None:
    """Check a parsed boxes file against ``boxes.schema.json``; the message names the field."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        message = error.message if len(error.message) <= 120 else error.message[:117] + "..."
        raise InputError(f"{path}: {error.json_path}: {message} (see the README, Box JSON)")


def read_boxes(path: str | Path, image: sitk.Image) -> dict[int, Box]:
    """Boxes for ``image`` from a boxes file (its points, if any, are left out: see ``read_prompts``)."""
    return read_prompts(path, image)[0]


def read_prompts(path: str | Path, image: sitk.Image) -> tuple[dict[int, Box], dict[int, tuple[Click, ...]]]:
    """Boxes and clicks per slice for ``image`` from a boxes file; refuses a file made for another volume size. A file made
    for a volume of another spacing, origin or direction (the same series stored with its rows reversed, another
    patient) is read by its physical coordinates; pixel ones alone are refused there."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except FileNotFoundError:
        raise InputError(f"boxes file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"boxes file {path} is a folder") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"cannot read boxes file {path}: {error}") from None
    _require_version_for_points(data, path)
    validate_boxes_json(data, path)
    recorded = data.get("image", {})
    size = recorded.get("size")
    if size is not None and list(size) != list(image.GetSize()):
        raise InputError(f"{path} was made for a volume of size {size}, the input is {list(image.GetSize())}")
    entries = data.get("boxes", [])
    moved = _moved_geometry(recorded, image)
    if moved:  # pixels of the recorded volume are other places on this one: only physical coordinates carry over
        entries = [_physical_only(entry, number, f"{path} was made for a volume with another {moved}") for number, entry in enumerate(entries)]
    boxes: dict[int, Box] = {}
    points: dict[int, tuple[Click, ...]] = {}
    entry_of_slice: dict[int, int] = {}
    for number, entry in enumerate(entries):
        try:
            index, box, clicks = _entry_prompts(entry, image)
        except (ValueError, OverflowError) as error:
            raise InputError(f"{path}: $.boxes[{number}]: {error}") from None
        _check_slice(index, image, path)
        if index in entry_of_slice:
            raise InputError(f"{path}: $.boxes[{entry_of_slice[index]}] and $.boxes[{number}] are both on slice {index}; give one entry per slice")
        entry_of_slice[index] = number
        if box is not None:
            boxes[index] = _inside(box, index, image, path)
        if clicks:
            _check_points(clicks, index, image, path)
            points[index] = clicks
    return boxes, points


def _moved_geometry(recorded: dict, image: sitk.Image) -> str | None:
    """Which of the spacing, origin and direction a file records differs from ``image``'s (beyond 1 % of a voxel)."""
    tolerance = GEOMETRY_TOLERANCE * min(image.GetSpacing())
    for what, value, atol in (
        ("spacing", image.GetSpacing(), tolerance), ("origin", image.GetOrigin(), tolerance), ("direction", image.GetDirection(), GEOMETRY_TOLERANCE),
    ):
        if what in recorded and not np.allclose(recorded[what], value, rtol=0, atol=atol):
            return what
    return None


def _physical_only(entry: dict, number: int, reason: str) -> dict:
    """The entry without its pixel box and points; refused when it has no physical ones in their place."""
    if "pixel" in entry and not entry.keys() & {"lps", "ras"} or "points" in entry and not entry.keys() & {"points_lps", "points_ras"}:
        raise InputError(f"{reason}, so its pixel coordinates ($.boxes[{number}]) would lie elsewhere on the input: "
                         "give lps or ras coordinates, or propose the boxes again")
    return {key: value for key, value in entry.items() if key not in ("pixel", "points", "slice")}  # "slice" indexes the recorded volume


def _require_version_for_points(data, path: Path) -> None:
    """Points arrived with version 2: a version 1 file that has them says so (the schema alone would only say 'False schema')."""
    if isinstance(data, dict) and data.get("version") == 1 and isinstance(data.get("boxes"), list):
        for number, entry in enumerate(data["boxes"]):
            if isinstance(entry, dict) and entry.keys() & {"points", "points_lps", "points_ras"}:
                raise InputError(f'{path}: $.boxes[{number}]: points need "version": 2 (version 1 files hold boxes only)')


def _entry_prompts(entry: dict, image: sitk.Image) -> tuple[int, Box | None, tuple[Click, ...]]:
    """The slice of an entry, its box (if any) and its clicks; a box and points on different slices are refused."""
    found: dict[str, tuple[int, Any]] = {}  # "box": (slice, Box), "points": (slice, tuple[Click, ...])
    if any(key in entry for key in ("pixel", "lps", "ras")):
        found["box"] = _entry_box(entry, image)
    if any(key in entry for key in ("points", "points_lps", "points_ras")):
        found["points"] = _entry_points(entry, image)
    slices = {index for index, _ in found.values()}
    if len(slices) > 1:
        raise ValueError(f"the box lies on slice {found['box'][0]}, the points on slice {found['points'][0]}")
    return slices.pop(), found.get("box", (None, None))[1], found.get("points", (None, ()))[1]


def _entry_box(entry: dict, image: sitk.Image) -> tuple[int, Box]:
    if "pixel" in entry:
        x0, y0, x1, y1 = (float(value) for value in entry["pixel"])
        return int(entry["slice"]), Box(x0, y0, x1, y1)
    corners = np.array(entry["lps"] if "lps" in entry else np.array(entry["ras"]) * LPS_TO_RAS, dtype=float)
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(corner.tolist()) for corner in corners[:2]])
    index = int(round(indices[:, 2].mean()))
    if np.abs(indices[:, 2] - index).max() > 0.5:
        raise ValueError(f"the box's corners lie on different slices ({', '.join(f'{k:.1f}' for k in indices[:, 2])}); give both on its slice")
    if "slice" in entry and int(entry["slice"]) != index:
        raise ValueError(f"slice {entry['slice']} does not match the physical corners (slice {index})")
    (xa, ya, _), (xb, yb, _) = indices
    return index, Box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def _entry_points(entry: dict, image: sitk.Image) -> tuple[int, tuple[Click, ...]]:
    if "points" in entry:
        return int(entry["slice"]), tuple(Click(float(x), float(y), label == 1) for x, y, label in entry["points"])
    physical = np.array([point[:3] for point in (entry["points_lps"] if "points_lps" in entry else entry["points_ras"])], dtype=float)
    labels = [point[3] for point in (entry["points_lps"] if "points_lps" in entry else entry["points_ras"])]
    if "points_lps" not in entry:
        physical = physical * LPS_TO_RAS
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(point.tolist()) for point in physical])
    index = int(round(indices[:, 2].mean()))
    if np.abs(indices[:, 2] - index).max() > 0.5:
        raise ValueError(f"the points lie on different slices ({', '.join(f'{k:.1f}' for k in indices[:, 2])}); give one entry per slice")
    if "slice" in entry and int(entry["slice"]) != index:
        raise ValueError(f"slice {entry['slice']} does not match the physical points (slice {index})")
    return index, tuple(Click(float(x), float(y), label == 1) for (x, y, _), label in zip(indices, labels))


def _check_slice(index: int, image: sitk.Image, path: Path) -> None:
    depth = image.GetSize()[2]
    if not 0 <= index < depth:
        raise InputError(f"{path}: slice {index} is outside the volume (0..{depth - 1})")


def _check_points(clicks: tuple[Click, ...], index: int, image: sitk.Image, path: Path) -> None:
    width, height = image.GetSize()[:2]
    for click in clicks:
        if not (-0.5 <= click.x <= width - 0.5 and -0.5 <= click.y <= height - 0.5):
            raise InputError(f"{path}: the point ({click.x:g}, {click.y:g}) on slice {index} lies outside the {width}x{height} slice")


def _inside(box: Box, index: int, image: sitk.Image, path: Path) -> Box:
    """``box`` clipped to its slice, as the proposed boxes are (a one-pixel-wide box is one column or row, not empty);
    an inverted box, or one wholly outside the slice, is refused."""
    width, height, _ = image.GetSize()
    if box.x0 > box.x1 or box.y0 > box.y1:
        raise InputError(f"{path}: the box on slice {index} is inverted: {box.as_tuple()}")
    if box.x1 < 0 or box.y1 < 0 or box.x0 > width - 1 or box.y0 > height - 1:
        raise InputError(f"{path}: the box on slice {index} lies outside the {width}x{height} slice")
    return box.clipped((height, width))

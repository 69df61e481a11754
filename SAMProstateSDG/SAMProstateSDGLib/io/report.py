"""A one-page report for the clinician's record: slices with the contour, the measurements, the method.

A4 portrait at 150 dpi, written as PNG or PDF (by the file's suffix). Slices are shown in the
radiological convention (patient's right on the left, anterior up), cropped around the gland.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..core.files import write_atomically
from .measurements import GlandMeasurements
from .overlay import OUTLINE, overlay_slices
from .provenance import SHA256_PREFIX, Provenance

PAGE_SIZE = (1240, 1754)  # A4 at 150 dpi
DPI = 150
MARGIN = 70
TILE = 340
GAP = 16
COLUMNS = 3
VALUE_COLUMN = 470  # x of the value column of the tables, from the margin
ZONE_OUTLINES = {1: (0, 200, 255), 2: OUTLINE}  # transition zone cyan, peripheral zone red
TEXT, GREY, RULE, WARNING = (20, 20, 20), (95, 95, 95), (190, 190, 190), (190, 30, 30)
REPORT_SUFFIXES = (".png", ".pdf")


@dataclass(frozen=True)
class ReportSubject:
    """What the report is about: the input's name, the DICOM identification when there is one, and what the reader
    must beware of in the input (e.g. a header with superior and inferior the other way round)."""

    input_name: str
    patient: str = ""
    study: str = ""
    series: str = ""
    series_uid: str = ""
    warnings: tuple[str, ...] = ()


def write_report(
    path: str | Path, subject: ReportSubject, image: sitk.Image, normalised: np.ndarray, labels: np.ndarray,
    measurements: GlandMeasurements, provenance: Provenance, zonal: bool,
) -> None:
    write_atomically(path, report_writer(path, subject, image, normalised, labels, measurements, provenance, zonal))


def report_writer(
    path: str | Path, subject: ReportSubject, image: sitk.Image, normalised: np.ndarray, labels: np.ndarray,
    measurements: GlandMeasurements, provenance: Provenance, zonal: bool,
) -> Callable[[str], object]:
    """The page rendered now, and what saves it to a (temporary) file in the format ``path`` names (PDF or PNG)."""
    page = render_report(subject, image, normalised, labels, measurements, provenance, zonal)
    file_format = "PDF" if Path(path).suffix.lower() == ".pdf" else "PNG"
    return lambda temporary: page.save(temporary, format=file_format, resolution=DPI)


def render_report(
    subject: ReportSubject, image: sitk.Image, normalised: np.ndarray, labels: np.ndarray,
    measurements: GlandMeasurements, provenance: Provenance, zonal: bool,
) -> Image.Image:
    page = Image.new("RGB", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(page)
    y = MARGIN
    draw.text((MARGIN, y), "Prostate MRI segmentation report", font=_font(44), fill=TEXT)
    y += 62
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for line in filter(None, [subject.patient, subject.study, subject.series, subject.series_uid, f"Input: {subject.input_name}", f"Created: {created}"]):
        draw.text((MARGIN, y), line, font=_font(24), fill=GREY)
        y += 32
    for warning in subject.warnings:
        y = _paragraph(draw, (MARGIN, y), f"Warning: {warning}.", _font(24), WARNING, PAGE_SIZE[0] - 2 * MARGIN, line_height=32)
    y = _rule(draw, y + 8)
    y = _slices(page, draw, y, image, normalised, labels, zonal)
    y = _rule(draw, y + 4)
    y = _table(draw, y, "Measurements", measurements.rows())
    y = _rule(draw, y + 4)
    model_rows = [(f"{model.role} model", f"{model.id}  sha256 {model.sha256[:SHA256_PREFIX]}") for model in provenance.models]
    y = _table(draw, y, "Method", [("Software", f"{provenance.software} {provenance.version}"), ("Method", provenance.method_title)] + model_rows)
    notes = (
        "Volume: voxels inside the contour x voxel volume. Diameters: largest extents along the patient's left-right and "
        "anterior-posterior axes on the axial section of largest area, and along the cranio-caudal axis over the gland. "
        "The ellipsoid volume is for comparison with hand measurements; the volume from the contour is the better estimate. "
        "Research software, not a certified medical device: check the contour on the images before using these numbers."
    )
    _paragraph(draw, (MARGIN, max(y + 10, PAGE_SIZE[1] - MARGIN - 4 * 26)), notes, _font(19), GREY, PAGE_SIZE[0] - 2 * MARGIN)
    return page


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _rule(draw: ImageDraw.ImageDraw, y: int) -> int:
    draw.line((MARGIN, y, PAGE_SIZE[0] - MARGIN, y), fill=RULE, width=2)
    return y + 18


def _slices(page: Image.Image, draw: ImageDraw.ImageDraw, y: int, image: sitk.Image, normalised: np.ndarray, labels: np.ndarray, zonal: bool) -> int:
    """Up to six slices with the contour, cropped to the gland; returns the y below them."""
    grey, shown_labels = _radiological(image, normalised), _radiological(image, labels)
    indices = overlay_slices(shown_labels, {}) or [len(shown_labels) // 2]
    crop = _gland_crop(shown_labels[indices])
    captions = slice_captions(image, indices)
    for number, index in enumerate(indices):
        tile = _tile(grey[index], shown_labels[index], zonal, crop)
        x = (PAGE_SIZE[0] - COLUMNS * TILE - (COLUMNS - 1) * GAP) // 2 + (number % COLUMNS) * (TILE + GAP)
        top = y + (number // COLUMNS) * (TILE + GAP + 30)
        page.paste(tile, (x, top))
        draw.text((x, top + TILE + 2), captions[number], font=_font(20), fill=GREY)
    rows = -(-len(indices) // COLUMNS)
    y += rows * (TILE + GAP + 30)
    legend = "Contour: transition zone (cyan), peripheral zone (red)" if zonal else "Contour: prostate (red)"
    draw.text((MARGIN, y), legend + "; patient's right on the left, anterior up", font=_font(20), fill=GREY)
    return y + 30


def _radiological(image: sitk.Image, array: np.ndarray) -> np.ndarray:
    """``array`` (on ``image``'s grid) reoriented to LPS: rows anterior to posterior, columns right to left."""
    volume = sitk.GetImageFromArray(array)
    volume.CopyInformation(image)
    return sitk.GetArrayFromImage(sitk.DICOMOrient(volume, "LPS"))


def slice_captions(image: sitk.Image, indices: list[int]) -> list[str]:
    """Each shown (LPS) slice named as the console, the boxes JSON and the overlay name it: its 0-based slice index in
    the image file, with its superior position in mm as Slicer shows it (the position alone where the file is not axial).

    Reorienting to LPS only permutes and flips axes: the shown slices run along the file axis closest to S-I, upwards."""
    direction, size = np.array(image.GetDirection()).reshape(3, 3), image.GetSize()
    axis = int(np.argmax(np.abs(direction[2])))
    captions = []
    for index in indices:
        along = index if direction[2, axis] > 0 else size[axis] - 1 - index
        centre = [along if dimension == axis else (size[dimension] - 1) / 2 for dimension in range(3)]
        position = f"S {image.TransformContinuousIndexToPhysicalPoint(centre)[2]:.1f} mm"
        captions.append(f"slice {along}, {position}" if axis == 2 else position)
    return captions


def _gland_crop(labels: np.ndarray) -> tuple[slice, slice]:
    """A square window around the gland on every shown slice (half its size again as margin)."""
    rows, columns = labels.shape[1:]
    found = np.argwhere(labels.any(axis=0))
    if not len(found):
        return slice(0, rows), slice(0, columns)
    low, high = found.min(axis=0), found.max(axis=0) + 1
    centre, side = (low + high) / 2, int(max(high - low) * 1.5)
    side = min(max(side, 64), rows, columns)
    start = [int(np.clip(round(centre[axis] - side / 2), 0, (rows, columns)[axis] - side)) for axis in (0, 1)]
    return slice(start[0], start[0] + side), slice(start[1], start[1] + side)


def _tile(grey: np.ndarray, labels: np.ndarray, zonal: bool, crop: tuple[slice, slice]) -> Image.Image:
    rgb = np.repeat((np.clip(grey[crop], 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    picture = Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.BICUBIC)
    scaled = np.asarray(Image.fromarray(labels[crop].astype(np.uint8)).resize((TILE, TILE), Image.Resampling.NEAREST))
    pixels = np.array(picture)
    outlines = ZONE_OUTLINES if zonal else {None: OUTLINE}
    for label, colour in outlines.items():
        mask = scaled > 0 if label is None else scaled == label
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        pixels[edge] = colour
    return Image.fromarray(pixels)


def _table(draw: ImageDraw.ImageDraw, y: int, title: str, rows: list[tuple[str, str]]) -> int:
    draw.text((MARGIN, y), title, font=_font(30), fill=TEXT)
    y += 44
    value_x = MARGIN + VALUE_COLUMN
    for name, value in rows:
        draw.text((MARGIN + 10, y), name, font=_font(24), fill=TEXT)
        size = 24  # a long value (a method's title) is set smaller to stay on the page
        while size > 14 and draw.textlength(value, font=_font(size)) > PAGE_SIZE[0] - MARGIN - value_x:
            size -= 1
        draw.text((value_x, y + (24 - size) // 2), value, font=_font(size), fill=TEXT)
        y += 33
    return y + 4


def _paragraph(
    draw: ImageDraw.ImageDraw, origin: tuple[int, int], text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, fill, width: int,
    line_height: int = 26,
) -> int:
    """``text`` wrapped to ``width``; returns the y below its last line."""
    x, y = origin
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) > width and line:
            draw.text((x, y), line, font=font, fill=fill)
            y, line = y + line_height, word
        else:
            line = candidate
    draw.text((x, y), line, font=font, fill=fill)
    return y + line_height

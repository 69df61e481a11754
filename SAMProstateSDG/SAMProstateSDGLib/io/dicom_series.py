"""DICOM input: find the series in a folder, pick the axial T2 one, read it with its headers.

A study exported from PACS holds several series (localiser, T2 in three planes, DWI, ADC, …).
The axial T2 series is chosen by its DICOM attributes, in this order: MR modality; "T2" in the
series description or protocol name (not T2*, T2 map); slices within 30° of axial; the finest in-plane
pixels; most slices; the latest series number.
Among several series none of which is named T2, none is chosen. ``--series-uid`` overrides the choice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from ..core.errors import InputError
from .volume_io import AXIAL_COSINE, slice_plane, validate_volume

T2_PATTERN = re.compile(r"t2(?![\s_-]*(\*|star|map))", re.IGNORECASE)
POSITION_TOLERANCE_MM = 0.01  # image positions closer than this are the same position
SPACING_TOLERANCE = 0.01  # slice steps may differ from their median by 1 % (rounded positions)


@dataclass(frozen=True)
class DicomSeries:
    """One series' headers (pixel data not read), sorted along the slice normal."""

    uid: str
    headers: tuple[pydicom.Dataset, ...]
    files: tuple[Path, ...]

    @property
    def first(self) -> pydicom.Dataset:
        return self.headers[0]

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or self.first.get("ProtocolName", "") or "")

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", ""))

    @property
    def is_t2(self) -> bool:
        names = f"{self.first.get('SeriesDescription', '')} {self.first.get('ProtocolName', '')}"
        return bool(T2_PATTERN.search(names))

    @property
    def axial_cosine(self) -> float:
        """|cos| of the angle between the slice normal and the patient's S-I axis (1 = axial); 0 without orientation."""
        normal = _slice_normal(self.first)
        return 0.0 if normal is None else slice_plane(normal)[1]

    @property
    def plane(self) -> str:
        normal = _slice_normal(self.first)
        if normal is None:
            return "unknown plane"
        return slice_plane(normal)[0]

    def summary(self, with_uid: bool = True) -> str:
        number = self.first.get("SeriesNumber", "?")
        uid = f", UID {self.uid}" if with_uid else ""
        return f'series {number} "{self.description}" ({self.modality}, {self.plane}, {len(self.files)} slices{uid})'

    @property
    def pixel_mm(self) -> float:
        """The larger in-plane pixel spacing (inf without PixelSpacing)."""
        spacing = self.first.get("PixelSpacing")
        return float(max(spacing)) if spacing and len(spacing) == 2 else float("inf")

    def preference(self) -> tuple:
        """Higher is more like the prostate's axial T2: MR, named T2, axial, the finest in-plane pixels (the small field
        of view PI-RADS asks for, before a large-field pelvic T2), most slices, the latest series (a repeat)."""
        return (
            self.modality == "MR", self.is_t2, bool(self.axial_cosine >= AXIAL_COSINE), -round(self.pixel_mm, 2), len(self.files),
            self.axial_cosine, self.series_number,
        )

    @property
    def series_number(self) -> int:
        try:
            return int(self.first.get("SeriesNumber"))
        except (TypeError, ValueError):
            return -1


@dataclass(frozen=True)
class DicomVolume:
    """The chosen series read as a volume: ``image`` slice k comes from ``series.headers[k]``."""

    series: DicomSeries
    image: sitk.Image
    alternatives: int  # how many other series the folder holds


def find_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM image series under ``folder`` (any depth); files that are not DICOM are skipped."""
    grouped: dict[str, list[tuple[pydicom.Dataset, Path]]] = {}
    for path in sorted(item for item in folder.rglob("*") if item.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "SeriesInstanceUID" in header and "ImagePositionPatient" in header and "ImageOrientationPatient" in header:
            grouped.setdefault(str(header.SeriesInstanceUID), []).append((header, path))
    return [_sorted_series(uid, members) for uid, members in grouped.items()]


def series_from_files(files: list[Path]) -> DicomSeries:
    """The series these image files make up (e.g. the files a Slicer volume was loaded from), sorted along the slice normal."""
    members = []
    for path in files:
        try:
            members.append((pydicom.dcmread(path, stop_before_pixels=True), Path(path)))
        except (InvalidDicomError, OSError, ValueError) as error:
            raise InputError(f"cannot read the DICOM file {path}: {error}") from None
    uids = {str(header.get("SeriesInstanceUID", "")) for header, _ in members}
    if len(uids) != 1 or not all("ImagePositionPatient" in header and "ImageOrientationPatient" in header for header, _ in members):
        raise InputError("the DICOM files are not the images of one series with position and orientation")
    return _sorted_series(uids.pop(), members)


def choose_series(series: list[DicomSeries], uid: str | None = None) -> DicomSeries:
    """The series with this UID, the only one, or else the most axial-T2-like one (``DicomSeries.preference``); among
    several series none of which is named T2, none is guessed (an ADC or DWI series would be segmented as a T2)."""
    if not series:
        raise InputError("no DICOM image series (with position and orientation) in the folder")
    listing = "; ".join(item.summary() for item in series)
    if uid is not None:
        for candidate in series:
            if candidate.uid == uid:
                return candidate
        raise InputError(f"no series with UID {uid}; the folder holds: {listing}")
    chosen = max(series, key=DicomSeries.preference)
    if len(series) > 1 and not chosen.is_t2:
        raise InputError(f"none of the {len(series)} series is named T2 (description or protocol); choose one with --series-uid: {listing}")
    return chosen


def read_dicom_volume(folder: Path, uid: str | None = None) -> DicomVolume:
    """Pick a series in ``folder`` and read it (slices in the order of ``series.headers``)."""
    series = find_series(folder)
    if not series:
        raise InputError(f"no DICOM image series (with position and orientation) in {folder}")
    chosen = choose_series(series, uid)
    image = read_series(chosen)
    validate_volume(image, chosen.summary())
    return DicomVolume(chosen, image, len(series) - 1)


def read_series(series: DicomSeries) -> sitk.Image:
    """The series as a volume, once its images are known to make one evenly spaced stack (``stack_problem``)."""
    problem = stack_problem(series)
    if problem:
        raise InputError(f"cannot use {series.summary()}: {problem}; export the series again complete, or choose another series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise InputError(f"cannot read {series.summary()}: {reason}") from None
    return image


def stack_problem(series: DicomSeries) -> str | None:
    """Why the series' images do not make one volume (None when they do): images in several orientations or at one
    position (echoes, b-values or repeats kept in one series), or slices unevenly spaced (a missing slice) or shifted
    sideways from one to the next. A volume stacked from them anyway would have the wrong geometry."""
    orientations = {tuple(np.round(np.array(header.ImageOrientationPatient, dtype=float), 4)) for header in series.headers}
    normal = _slice_normal(series.first)
    if len(orientations) > 1 or normal is None:
        return f"its images lie in {len(orientations)} orientations" if len(orientations) > 1 else None
    steps = np.diff(np.array([header.ImagePositionPatient for header in series.headers], dtype=float), axis=0)
    along = steps @ normal
    if not len(steps):
        return None
    if (along < POSITION_TOLERANCE_MM).any():
        return f"{int((along < POSITION_TOLERANCE_MM).sum())} of its images lie at the position of another (several echoes, b-values or repeats in one series)"
    spacing = float(np.median(along))
    tolerance = SPACING_TOLERANCE * spacing + POSITION_TOLERANCE_MM
    if np.abs(along - spacing).max() > tolerance:
        return f"its slices are not evenly spaced ({along.min():.2f} to {along.max():.2f} mm apart: a slice missing?)"
    if np.linalg.norm(steps - np.outer(along, normal), axis=1).max() > tolerance:
        return "its slices are shifted sideways from one to the next (a sheared stack)"
    return None


def _slice_normal(header: pydicom.Dataset) -> np.ndarray | None:
    orientation = header.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    normal = np.cross(np.array(orientation[:3], dtype=float), np.array(orientation[3:], dtype=float))
    length = np.linalg.norm(normal)
    return normal / length if length > 0 else None


def _sorted_series(uid: str, members: Sequence[tuple[pydicom.Dataset, Path]]) -> DicomSeries:
    """Slices sorted by position along the slice normal (as SimpleITK stacks them)."""
    normal = _slice_normal(members[0][0])
    if normal is not None:
        members = sorted(members, key=lambda member: float(np.dot(np.array(member[0].ImagePositionPatient, dtype=float), normal)))
    return DicomSeries(uid, tuple(header for header, _ in members), tuple(path for _, path in members))

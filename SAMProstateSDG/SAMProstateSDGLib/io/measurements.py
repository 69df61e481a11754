"""Gland volume, the three diameters a radiologist measures, the ellipsoid volume and PSA density.

Everything is computed in physical millimetres from a label array and its voxel-to-patient
matrix, so any acquisition orientation and voxel size gives the same numbers. The matrix may
map to DICOM's LPS (SimpleITK) or to Slicer's RAS: only the axes matter, not their signs.

- Volume: voxels × voxel volume (the reference for everything else).
- Transverse (left–right) and anteroposterior diameters: the largest extents along the patient's
  L–R and A–P axes on the axial section of largest gland area (as measured on axial T2).
- Craniocaudal diameter: the largest extent along the patient's S–I axis (as measured on a
  sagittal view).
- Ellipsoid volume: π/6 × AP × TR × CC, the formula urologists use from those diameters.
- PSA density: PSA (ng/mL) / gland volume (mL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.labels import ZONE_NAMES

MM3_PER_ML = 1000.0


@dataclass(frozen=True)
class GlandMeasurements:
    """What a clinician reads off a segmentation; diameters and derived values are None for an empty mask."""

    volume_ml: float
    transverse_mm: float | None
    anteroposterior_mm: float | None
    craniocaudal_mm: float | None
    zone_volumes_ml: dict[str, float] = field(default_factory=dict)
    psa_ng_ml: float | None = None

    @property
    def ellipsoid_volume_ml(self) -> float | None:
        if self.transverse_mm is None or self.anteroposterior_mm is None or self.craniocaudal_mm is None:
            return None
        return ellipsoid_volume_ml(self.transverse_mm, self.anteroposterior_mm, self.craniocaudal_mm)

    @property
    def psa_density(self) -> float | None:
        """ng/mL per mL of gland; None without a PSA value or with an empty mask."""
        if self.psa_ng_ml is None or self.volume_ml <= 0:
            return None
        return self.psa_ng_ml / self.volume_ml

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value with unit) for a table: the console, the report page, a Slicer table."""
        rows = [("Gland volume (from the contour)", _format(self.volume_ml, "mL"))]
        rows += [(f"{name.capitalize()} volume", _format(volume, "mL")) for name, volume in self.zone_volumes_ml.items()]
        rows += [
            ("Transverse diameter (L-R)", _format(self.transverse_mm, "mm")),
            ("Anteroposterior diameter (A-P)", _format(self.anteroposterior_mm, "mm")),
            ("Craniocaudal diameter (S-I)", _format(self.craniocaudal_mm, "mm")),
            ("Ellipsoid volume (pi/6 x AP x TR x CC)", _format(self.ellipsoid_volume_ml, "mL")),
        ]
        if self.psa_ng_ml is not None:
            rows += [("PSA", _format(self.psa_ng_ml, "ng/mL", 2)), ("PSA density", _format(self.psa_density, "ng/mL/mL", 3))]
        return rows

    def as_text(self) -> str:
        """Tab-separated lines (what Slicer's "copy" puts on the clipboard)."""
        return "\n".join(f"{name}\t{value}" for name, value in self.rows())

    def to_json(self) -> dict:
        """Plain JSON values, never NaN: missing values are null."""
        return {
            "gland_volume_ml": _rounded(self.volume_ml),
            "zone_volumes_ml": {name: _rounded(volume) for name, volume in self.zone_volumes_ml.items()},
            "diameters_mm": {
                "transverse": _rounded(self.transverse_mm, 1),
                "anteroposterior": _rounded(self.anteroposterior_mm, 1),
                "craniocaudal": _rounded(self.craniocaudal_mm, 1),
            },
            "ellipsoid_volume_ml": _rounded(self.ellipsoid_volume_ml),
            "psa_ng_ml": self.psa_ng_ml,
            "psa_density_ng_ml_per_ml": _rounded(self.psa_density, 3),
        }


def ellipsoid_volume_ml(transverse_mm: float, anteroposterior_mm: float, craniocaudal_mm: float) -> float:
    return math.pi / 6 * transverse_mm * anteroposterior_mm * craniocaudal_mm / MM3_PER_ML


def voxel_to_patient(image: sitk.Image) -> np.ndarray:
    """4 × 4 matrix from (i, j, k, 1) voxel indices to LPS millimetres."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def measure(labels: np.ndarray, ijk_to_patient: np.ndarray, zonal: bool = False, psa_ng_ml: float | None = None) -> GlandMeasurements:
    """Measure the gland (labels > 0) of a [slices, rows, columns] label array (k, j, i order).

    ``ijk_to_patient``: 4 × 4 voxel-index-to-millimetre matrix (``voxel_to_patient`` for a SimpleITK
    image, Slicer's IJKToRAS for a volume node). ``zonal``: also report the volume of labels 1 and 2.
    """
    if psa_ng_ml is not None and not (math.isfinite(psa_ng_ml) and psa_ng_ml > 0):
        raise InputError(f"PSA must be a positive number of ng/mL, not {psa_ng_ml}")
    axes = np.asarray(ijk_to_patient, dtype=float)[:3, :3]
    voxel_ml = abs(np.linalg.det(axes)) / MM3_PER_ML
    gland = labels > 0
    zones = {name: float((labels == label).sum() * voxel_ml) for label, name in ZONE_NAMES.items()} if zonal else {}
    if not gland.any():
        return GlandMeasurements(0.0, None, None, None, zones, psa_ng_ml)
    indices = np.argwhere(gland)[:, ::-1].astype(float)  # (i, j, k)
    points = indices @ axes.T  # millimetres, up to the origin (extents do not need it)
    # the largest extent of one voxel along each patient axis: its box projected onto the axis
    voxel_extent = np.abs(axes).sum(axis=1)
    transverse, anteroposterior = _extents(points[_largest_axial_section(indices, axes)], voxel_extent)[:2]
    craniocaudal = _extents(points, voxel_extent)[2]
    return GlandMeasurements(float(gland.sum() * voxel_ml), transverse, anteroposterior, craniocaudal, zones, psa_ng_ml)


def labels_from_segments(masks: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    """Segment name -> mask ([slices, rows, columns], as Slicer holds a segmentation) as one label array, and whether
    it is zonal: 1 transition zone and 2 peripheral zone when segments of both zone names are there (the others are
    not the gland), else 1 = the only segment. Several other segments are refused: which one is the gland?"""
    if not masks:
        raise InputError("the segmentation has no segments")
    zonal = set(ZONE_NAMES.values()) <= set(masks)
    if not zonal and len(masks) > 1:
        raise InputError(
            f"the segmentation holds {len(masks)} segments ({', '.join(masks)}): measure or export one whose only segment is "
            f"the gland, or whose zones are named {' and '.join(repr(name) for name in ZONE_NAMES.values())}"
        )
    labels = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for label, name in ZONE_NAMES.items() if zonal else ((1, next(iter(masks))),):
        labels[masks[name] > 0] = label
    return labels, zonal


def measure_image(labels: np.ndarray, image: sitk.Image, zonal: bool = False, psa_ng_ml: float | None = None) -> GlandMeasurements:
    return measure(labels, voxel_to_patient(image), zonal, psa_ng_ml)


def _largest_axial_section(indices: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """A boolean selection of the points on the axial section with the most gland voxels.

    Sections are taken along the voxel axis closest to the patient's S-I axis: the image slices of
    an axial acquisition, reformatted rows of a sagittal or coronal one.
    """
    axis = int(np.argmax(np.abs(axes[2]) / np.linalg.norm(axes, axis=0)))
    sections, counts = np.unique(indices[:, axis], return_counts=True)
    return indices[:, axis] == sections[np.argmax(counts)]


def _extents(points: np.ndarray, voxel_extent: np.ndarray) -> tuple[float, float, float]:
    """Largest extent along x (L-R), y (A-P), z (S-I): voxel centres' span plus one voxel's extent."""
    x, y, z = (float(value) for value in np.ptp(points, axis=0) + voxel_extent)
    return x, y, z


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _format(value: float | None, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"

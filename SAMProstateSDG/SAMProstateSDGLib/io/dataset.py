"""Finding image/mask pairs: through a ``cases.csv`` manifest, or ``NAME`` + ``NAME_seg`` files."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..core.errors import InputError
from .volume_io import VOLUME_SUFFIXES, read_header, read_image, read_volume


class Grid(Protocol):
    """What a loaded image and a read header (``sitk.ImageFileReader``) both tell of their voxel grid."""

    def GetSize(self) -> tuple[int, ...]: ...
    def GetSpacing(self) -> tuple[float, ...]: ...
    def GetOrigin(self) -> tuple[float, ...]: ...
    def GetDirection(self) -> tuple[float, ...]: ...


GRID_TOLERANCE = 1e-4  # spacing and origin: of the smallest spacing; direction: of the unit cosines


@dataclass(frozen=True)
class Case:
    name: str
    site: str
    split: str
    image: Path
    mask: Path

    def read(self) -> tuple[sitk.Image, np.ndarray]:
        """The image and its labels as a [slices, rows, columns] uint8 array (gland: labels > 0)."""
        image = read_volume(self.image)
        mask = read_image(self.mask, "mask")
        self.check_same_grid(image, mask)
        return image, canonical_zones(sitk.GetArrayFromImage(mask).astype(np.uint8))

    def check_same_grid(self, image: Grid, mask: Grid) -> None:
        """Refuse a mask whose voxel grid (size, spacing, origin, direction) is not the image's."""
        if mask.GetSize() != image.GetSize():
            raise InputError(f"case {self.name}: mask {self.mask} is {mask.GetSize()}, image is {image.GetSize()}")
        tolerance = GRID_TOLERANCE * min(image.GetSpacing())
        for what, image_value, mask_value, atol in (
            ("spacing", image.GetSpacing(), mask.GetSpacing(), tolerance),
            ("origin", image.GetOrigin(), mask.GetOrigin(), tolerance),
            ("direction", image.GetDirection(), mask.GetDirection(), GRID_TOLERANCE),
        ):
            if not np.allclose(image_value, mask_value, rtol=0, atol=atol):
                raise InputError(f"case {self.name}: mask {self.mask} has {what} {_rounded(mask_value)}, image has {_rounded(image_value)}")


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(value, 4) for value in values)



TRANSITION_ZONE, PERIPHERAL_ZONE = 1, 2


def canonical_zones(labels: np.ndarray) -> np.ndarray:
    """Zonal labels with 1 = transition zone, 2 = peripheral zone, whichever way a site numbered them.

    Sites disagree (NCI-ISBI's RUNMC cases give the peripheral zone label 1, Prostate158 label 2).
    The peripheral zone wraps the gland, so the zone with the larger share of its voxels on the
    gland's in-plane boundary is taken as peripheral. Labels other than 1 and 2 are left alone.
    """
    gland = (labels == 1) | (labels == 2)
    boundary = gland & ~ndimage.binary_erosion(gland, structure=np.ones((1, 3, 3), dtype=bool))
    shares = [(boundary & (labels == zone)).sum() / max((labels == zone).sum(), 1) for zone in (1, 2)]
    if shares[0] <= shares[1]:
        return labels
    swapped = labels.copy()
    swapped[labels == 1], swapped[labels == 2] = PERIPHERAL_ZONE, TRANSITION_ZONE
    return swapped


def find_cases(data: str | Path, site: str | None = None, split: str | None = None) -> list[Case]:
    """Cases under ``data``, filtered by site and/or split (case-insensitive)."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"data folder not found: {data}")
    manifest = data / "cases.csv"
    cases = _from_manifest(data, manifest) if manifest.is_file() else _from_pairs(data)
    selected = [
        case
        for case in cases
        if (site is None or case.site.lower() == site.lower()) and (split is None or case.split.lower() == split.lower())
    ]
    if not selected:
        wanted = ", ".join(f"{key} {value}" for key, value in (("site", site), ("split", split)) if value)
        raise InputError(f"no cases in {data}" + (f" with {wanted}" if wanted else ""))
    for case in selected:  # before any model loads or any case is read
        for what, path in (("image", case.image), ("mask", case.mask)):
            if not path.exists():
                raise InputError(f"case {case.name}: {what} {path} not found")
        image, mask = read_header(case.image), read_header(case.mask)
        if image is not None and mask is not None:  # a DICOM series' grid is compared when the case is read
            case.check_same_grid(image, mask)
    return selected


def _from_manifest(data: Path, manifest: Path) -> list[Case]:
    with open(manifest, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"case", "image", "mask"} - set(rows[0] if rows else {})
    if missing:
        raise InputError(f"{manifest} lacks the column(s) {', '.join(sorted(missing))}")
    return [
        Case(row["case"], row.get("site", ""), row.get("split", ""), data / row["image"], data / row["mask"])
        for row in rows
    ]


def _from_pairs(data: Path) -> list[Case]:
    cases = []
    for mask in sorted(data.rglob("*_seg.*")):
        for suffix in VOLUME_SUFFIXES:
            if mask.name.endswith("_seg" + suffix):
                image = mask.with_name(mask.name[: -len("_seg" + suffix)] + suffix)
                if image.is_file():
                    cases.append(Case(image.name[: -len(suffix)], mask.parent.name, "", image, mask))
    return cases

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
    names = [case.name for case in cases]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:  # results, caches and outputs are kept by case name
        raise InputError(f"{manifest if manifest.is_file() else data} holds two cases named {repeated}; give every case its own name")
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
    with open(manifest, encoding="utf-8-sig", newline="") as handle:  # -sig: spreadsheets save CSV with a byte-order mark
        rows = list(csv.DictReader(handle))
    missing = {"case", "image", "mask"} - set(rows[0] if rows else {})
    if missing:
        raise InputError(f"{manifest} lacks the column(s) {', '.join(sorted(missing))}")
    for line, row in enumerate(rows, start=2):  # csv fills a short row with None and keeps a long row's rest under None
        if None in row or None in row.values():
            raise InputError(f"{manifest} line {line} has {'more' if None in row else 'fewer'} values than the header")
        empty = [column for column in ("case", "image", "mask") if not row[column].strip()]
        if empty:
            raise InputError(f"{manifest} line {line} has no {' and no '.join(empty)}")
    return [
        Case(row["case"], row.get("site", ""), row.get("split", ""), data / row["image"], data / row["mask"])
        for row in rows
    ]


def require_zonal_masks(cases: list[Case], method: str) -> None:
    """Refuse masks that are not zonal (labels 0, 1 and 2, both zones present) for a method that learns the zones."""
    for case in cases:
        labels = set(np.unique(sitk.GetArrayFromImage(read_image(case.mask, "mask"))).tolist())
        if not labels <= {0, 1, 2} or not {1, 2} <= labels:
            raise InputError(f"case {case.name}: its mask holds the labels {', '.join(map(str, sorted(labels)))}; --method {method} learns the "
                             "transition (1) and peripheral (2) zones: give zonal masks, or train a whole-gland method")


def site_cases(data: str | Path, site: str) -> list[Case]:
    """Every case of a training site; refused when they span several splits (its held-out cases would be trained on)."""
    cases = find_cases(data, site=site)
    splits = sorted({case.split for case in cases})
    if len(splits) > 1:
        raise InputError(f"site {site} has cases in the splits {', '.join(splits)}: training takes every case of its site; "
                         "give the held-out cases another site in cases.csv")
    return cases


def find_cases_of_splits(data: str | Path, site: str | None, splits: tuple[str, ...]) -> list[Case]:
    """The cases of these splits, split by split; every case where none has a split (``NAME.nii.gz`` + ``NAME_seg``
    pairs, or a cases.csv without a split column)."""
    cases = find_cases(data, site=site)
    if not any(case.split for case in cases):
        return cases
    chosen = [case for split in splits for case in cases if case.split.lower() == split.lower()]
    if not chosen:
        raise InputError(f"no cases in {data} with split {' or '.join(splits)}")
    return chosen


def _from_pairs(data: Path) -> list[Case]:
    """``NAME_seg.EXT`` masks beside their ``NAME.EXT`` images (any volume suffix each), named NAME, or by their folders
    under ``data`` and NAME (``P001-t2``) where two folders hold the same NAME (one folder per patient or per site)."""
    pairs = []
    for mask in sorted(data.rglob("*_seg.*")):
        mask_suffix = next((suffix for suffix in VOLUME_SUFFIXES if mask.name.endswith("_seg" + suffix)), None)
        if mask_suffix is None:
            continue
        stem = mask.name[: -len("_seg" + mask_suffix)]
        image = next((mask.with_name(stem + suffix) for suffix in VOLUME_SUFFIXES if mask.with_name(stem + suffix).is_file()), None)
        if image is not None:
            pairs.append((stem, image, mask))
    stems = [stem for stem, _, _ in pairs]
    return [
        Case(stem if stems.count(stem) == 1 else "-".join((*image.parent.relative_to(data).parts, stem)), mask.parent.name, "", image, mask)
        for stem, image, mask in pairs
    ]

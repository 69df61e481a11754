"""Reading and validating input volumes, normalising intensities, writing results atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monai.transforms import ScaleIntensityRangePercentiles

from .errors import InputError
from .files import write_atomically

MIN_SLICE_PIXELS = 16


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar volume (any SimpleITK format, or a DICOM series folder) and validate it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_folder(path)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise InputError(f"cannot read {path}: {reason}") from None
    validate_volume(image, str(path))
    return image


def _read_dicom_folder(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"no DICOM series in folder {folder}")
    if len(series) > 1:
        raise InputError(f"{len(series)} DICOM series in {folder}; point to a folder with one series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def validate_volume(image: sitk.Image, name: str) -> None:
    """Refuse what the pipeline cannot segment: not 3D, multi-component, tiny, or constant."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per pixel; a scalar T2 volume is needed")
    if image.GetDimension() != 3:
        raise InputError(f"{name} is {image.GetDimension()}D; a 3D volume is needed")
    width, height, depth = image.GetSize()
    if depth == 1:
        raise InputError(f"{name} has a single slice; a 3D volume is needed")
    if min(width, height) < MIN_SLICE_PIXELS:
        raise InputError(f"{name} slices are {width}x{height} pixels; at least {MIN_SLICE_PIXELS}x{MIN_SLICE_PIXELS} are needed")
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinite values")
    if values.min() == values.max():
        raise InputError(f"{name} is constant (every voxel is {values.min()}); nothing to segment")


def normalised_array(image: sitk.Image, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Voxels as float32 [slices, rows, columns] scaled to 0..1 between two percentiles of the volume."""
    scale = ScaleIntensityRangePercentiles(lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)
    return np.asarray(scale(sitk.GetArrayFromImage(image).astype(np.float32)[None]))[0]


def label_image(labels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label image with the reference's exact origin, spacing and direction."""
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless asked, and to write into a missing folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"output {path} exists; use --overwrite to replace it")
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist")
    return path


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    write_atomically(path, lambda temporary: sitk.WriteImage(image, temporary, useCompression=True))

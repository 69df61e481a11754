"""Reading and validating input volumes, normalising intensities, writing results atomically."""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.files import write_atomically

MIN_SLICE_PIXELS = 16
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")  # what is read as a volume file
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # one-file formats: written atomically, never half a pair
NIFTI_SUFFIXES = (".nii.gz", ".nii")
FLOAT32_LIMIT = float(np.finfo(np.float32).max)
LABEL_MAP_SPAN = 15  # an integer-valued volume whose values span no more than this is a label map, not an MR image
AXIAL_COSINE = np.cos(np.radians(30))  # slices tilted less than 30° from axial count as axial
PLANES = ("sagittal", "coronal", "axial")  # the plane whose normal is the patient's L-R, A-P or S-I axis
ORTHOGONALITY_TOLERANCE = 1e-4  # NIfTI stores a rotation; ITK coerces matrices further from one than this


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar volume (any SimpleITK format, or a DICOM series folder) and validate it."""
    image = read_image(path)
    validate_volume(image, str(path))
    return image


def read_image(path: str | os.PathLike, what: str = "input") -> sitk.Image:
    """Read an image file or DICOM series folder, refusing missing, truncated and unreadable ones."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    try:
        if path.is_dir():
            return _read_dicom_folder(path)
        _check_complete(path)
        with _native_messages_kept_if_read():
            return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read {path}: {_itk_reason(error)}") from None


def read_header(path: Path) -> sitk.ImageFileReader | None:
    """An image file's header (size, spacing, origin, direction) without its voxels; None for a DICOM folder."""
    if path.is_dir():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _native_messages_kept_if_read():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"cannot read {path}: {_itk_reason(error)}") from None
    return reader


def volume_files(path: Path) -> list[Path]:
    """The files a volume is read from: the path, and the data file a detached header (.mhd, .nhdr) names (not a
    LOCAL or LIST one, or a numbered pattern: MetaIO's and NRRD's patterns hold a ``%``)."""
    key = {".mhd": "ElementDataFile", ".nhdr": "data ?file"}.get(path.suffix.lower())
    if key is None:
        return [path]
    try:
        with open(path, encoding="latin-1") as header:
            text = header.read(1 << 16)  # a header is text of a few hundred bytes
    except OSError:  # missing or unreadable: reading it says so in one line
        return [path]
    for line in text.splitlines():
        found = re.match(rf"\s*{key}\s*[:=]\s*(.+?)\s*$", line, re.IGNORECASE)
        if found and found.group(1).upper() not in ("LOCAL", "LIST") and "%" not in found.group(1):
            return [path, path.parent / found.group(1)]
    return [path]


def _itk_reason(error: RuntimeError) -> str:
    """The telling line of an ITK exception: its last, unless that is a stale errno ("Reason: ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].startswith("Reason:"):
        return re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", lines[-2])
    return lines[-1] if lines else "unknown reason"


@contextmanager
def _native_messages_kept_if_read() -> Iterator[None]:
    """Hold what ITK's readers print to the process's stderr (MetaIO prints its own lines on a short file):
    shown after a successful read, dropped when the read fails and the one-line refusal says why."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))


def _check_complete(path: Path) -> None:
    """Refuse a gzip stream that is cut short or damaged, and NIfTI voxel data shorter than its header says
    (ITK would fill the missing voxels with zeros)."""
    compressed = path.name.endswith(".gz")
    if not compressed and not path.name.endswith(NIFTI_SUFFIXES):
        return  # ITK itself refuses short MetaImage and NRRD data
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            header = stream.read(540)
            if compressed:  # read to the end: gzip checks the stream's end marker, length and CRC there
                size = len(header) + sum(len(block) for block in iter(lambda: stream.read(1 << 20), b""))
            else:
                size = path.stat().st_size
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise InputError(f"cannot read {path}: truncated or corrupt ({error})") from None
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    needed = _nifti_data_end(header) if path.name.endswith(NIFTI_SUFFIXES) else None
    if needed is not None and size < needed:
        raise InputError(f"{path} is truncated: {size} bytes of image data, its header needs {needed}")


def _nifti_data_end(header: bytes) -> int | None:
    """Where a single-file NIfTI-1 or NIfTI-2 image's voxel data ends, from its header; None if not NIfTI."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims, bitpix = struct.unpack(order + "8h", header[40:56]), struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix, dims = struct.unpack(order + "h", header[14:16])[0], struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7:
        return None
    return int(offset) + math.prod(max(dim, 1) for dim in dims[1 : 1 + dims[0]]) * bitpix // 8


def _read_dicom_folder(folder: Path) -> sitk.Image:
    from .dicom_series import find_series, read_series  # which imports this module

    series = find_series(folder)
    if not series:
        raise InputError(f"no DICOM series in folder {folder}")
    if len(series) > 1:
        raise InputError(f"{len(series)} DICOM series in {folder}; point to a folder with one series")
    return read_series(series[0])


def slice_plane(normal: np.ndarray) -> tuple[str, float]:
    """The plane of slices with this normal (in patient LPS axes), and |cos| of the normal's angle to S-I (1 = axial)."""
    normal = np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    return PLANES[int(np.argmax(np.abs(normal)))], float(abs(normal[2]))


def validate_volume(image: sitk.Image, name: str) -> None:
    """Refuse what the pipeline cannot segment: not 3D, multi-component, tiny, not axial, constant, or a label map."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per pixel; a scalar T2 volume is needed")
    if image.GetDimension() != 3:
        raise InputError(f"{name} is {image.GetDimension()}D; a 3D volume is needed")
    width, height, depth = image.GetSize()
    if depth == 1:
        raise InputError(f"{name} has a single slice; a 3D volume is needed")
    if min(width, height) < MIN_SLICE_PIXELS:
        raise InputError(f"{name} slices are {width}x{height} pixels; at least {MIN_SLICE_PIXELS}x{MIN_SLICE_PIXELS} are needed")
    plane, cosine = slice_plane(np.array(image.GetDirection()).reshape(3, 3)[:, 2])
    if cosine < AXIAL_COSINE:  # SAM would segment sagittal or coronal slices, which nothing here was trained or tuned on
        raise InputError(f"{name} has {plane} slices ({np.degrees(np.arccos(cosine)):.0f}° from axial): "
                         "the prostate is segmented on axial T2 slices; give the axial series, or reslice this one to axial")
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if max(abs(low), abs(high), high - low) > FLOAT32_LIMIT:
        raise InputError(f"{name} has values from {low:.3g} to {high:.3g}, beyond 32-bit floating point (±{FLOAT32_LIMIT:.3g}); rescale it")
    if low == high:
        raise InputError(f"{name} is constant (every voxel is {low:g}); nothing to segment")
    if high - low <= LABEL_MAP_SPAN and (np.issubdtype(values.dtype, np.integer) or np.array_equal(values, np.round(values))):
        shown = ", ".join(f"{label:g}" for label in np.unique(values))
        raise InputError(f"{name} holds only the values {shown}: it is a label map (a segmentation), not a T2 image")


def normalised_array(image: sitk.Image, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Voxels as float32 [slices, rows, columns] scaled to 0..1 between two percentiles of the volume."""
    from monai.transforms import ScaleIntensityRangePercentiles  # imported here: refusals need no MONAI (seconds to import)

    scale = ScaleIntensityRangePercentiles(lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)
    return np.asarray(scale(sitk.GetArrayFromImage(image).astype(np.float32)[None]))[0]


def label_image(labels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label image with the reference's exact origin, spacing and direction."""
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def check_label_suffix(path: Path) -> None:
    if not path.name.endswith(LABEL_SUFFIXES):
        raise InputError(f"cannot write a label volume as {path.name}: name it .nii.gz, .nii, .nrrd or .mha")


def check_label_geometry(image: sitk.Image, name: str, output: Path) -> None:
    """Refuse a direction matrix the output format would change (NIfTI stores only rotations)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    error = float(np.abs(direction.T @ direction - np.eye(3)).max())
    if output.name.endswith(NIFTI_SUFFIXES) and error > ORTHOGONALITY_TOLERANCE:
        raise InputError(f"{name} has a non-orthogonal direction matrix (off by {error:.2g}), which NIfTI cannot keep; "
                         f"write the label volume as .nrrd or .mha")


def image_writer(image: sitk.Image):
    """``write(path)`` of a compressed image, for the atomic writers of ``files``."""
    return lambda temporary: sitk.WriteImage(image, temporary, useCompression=True)


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    write_atomically(path, image_writer(image))

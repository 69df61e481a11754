"""Seeded acquisition shifts for the robustness suite (``samprostate evaluate --shifts``).

Each shift turns a case (image + reference labels) into what another scanner or protocol
might have produced: intensity inhomogeneity, noise, contrast, resolution, z coverage and
header conventions. Geometry shifts resample the labels with the image (nearest neighbour),
so every shifted case is scored against its own reference.

These models measure generalisation: they must never be used as training augmentation
(training uses generic families: random smooth fields, random convolutions, intensity curves).
The endorectal-coil field in particular is placed from the reference mask, which no training
or inference path may read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from monai.transforms import AdjustContrast, RandBiasField, RandRicianNoise

from ..core.errors import InputError

ShiftFunction = Callable[[sitk.Image, np.ndarray, np.random.Generator], tuple[sitk.Image, np.ndarray]]

# The endorectal coil: a receive coil in the rectum, just behind the gland.
COIL_BEHIND_GLAND_MM = 8.0  # coil axis this far behind the gland's posterior edge (rectal wall + coil housing)
COIL_GAIN = 8.0  # sensitivity at the coil relative to the far field
COIL_FALL_OFF_MM = 15.0  # e-folding distance of the sensitivity
COIL_FAR_FIELD = 0.25  # sensitivity far from the coil (anterior body) relative to the gland centre before scaling
COIL_SATURATION_PERCENTILE = 99.0  # the receiver clips the brightest 1 % of voxels (all of them next to the coil)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


def _with_voxels(voxels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(voxels.astype(np.float32))
    image.CopyInformation(reference)
    return image


def _physical_points(image: sitk.Image) -> np.ndarray:
    """Physical (LPS, mm) coordinates of every voxel, [slices, rows, columns, 3]."""
    width, height, depth = image.GetSize()
    k, j, i = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    indices = np.stack([i, j, k], axis=-1).astype(np.float64)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (indices * np.array(image.GetSpacing())) @ direction.T


def coil_field(image: sitk.Image, labels: np.ndarray) -> np.ndarray:
    """The endorectal coil's receive sensitivity on ``image``'s grid ([slices, rows, columns]).

    The coil is a line along the patient's inferior-superior axis, ``COIL_BEHIND_GLAND_MM`` behind
    the gland's most posterior point (found from the reference mask) at the gland's left-right
    centre. The sensitivity falls off exponentially with the distance to that line:
    ``far + gain * exp(-distance / fall_off)``, so the rectum and the posterior gland are bright
    and the anterior gland and the bladder are dark.
    """
    points = _physical_points(image)
    gland = points[labels > 0]
    coil_left_right = gland[:, 0].mean()
    coil_posterior = gland[:, 1].max() + COIL_BEHIND_GLAND_MM  # LPS: +y is posterior
    distance = np.hypot(points[..., 0] - coil_left_right, points[..., 1] - coil_posterior)
    return (COIL_FAR_FIELD + COIL_GAIN * np.exp(-distance / COIL_FALL_OFF_MM)).astype(np.float32)


def endorectal_coil(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """Endorectal coil: voxels times 0.25 + 8 exp(-d / 15 mm), d the in-plane distance to a line along the
    patient's z axis 8 mm behind the gland's posterior edge (placed from the reference mask), then clipped at
    the 99th percentile (receiver saturation)."""
    shaded = _array(image) * coil_field(image, labels)
    return _with_voxels(np.minimum(shaded, np.percentile(shaded, COIL_SATURATION_PERCENTILE)), image), labels


def _channel_first(image: sitk.Image) -> np.ndarray:
    return _array(image)[None]


def smooth_bias_field(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """MONAI ``RandBiasField``: exp of a random degree-3 polynomial, coefficients 0.1-0.2 (a strong field:
    about 3× brightest to darkest over the central half of the field of view, 40-60× corner to corner)."""
    transform = RandBiasField(degree=3, coeff_range=(0.1, 0.2), prob=1.0)
    transform.set_random_state(int(rng.integers(2**31)))
    return _with_voxels(np.asarray(transform(_channel_first(image)))[0], image), labels


def rician_noise(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """MONAI ``RandRicianNoise``: Gaussian real and imaginary noise of standard deviation 8-12 % of the
    volume's 99th intensity percentile, magnitude taken (low SNR)."""
    sigma = float(rng.uniform(0.08, 0.12) * np.percentile(_array(image), 99))
    transform = RandRicianNoise(prob=1.0, mean=0.0, std=sigma, relative=False, sample_std=False)
    transform.set_random_state(int(rng.integers(2**31)))
    return _with_voxels(np.asarray(transform(_channel_first(image)))[0], image), labels


def gamma_contrast(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """MONAI ``AdjustContrast``: intensity ** gamma on the volume's range, gamma 0.5-0.7 or 1.5-2.0 (one per case)."""
    gamma = float(rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.0))
    return _with_voxels(np.asarray(AdjustContrast(gamma)(_channel_first(image)))[0], image), labels


def resample(image: sitk.Image, labels: np.ndarray, spacing: tuple[float, float, float]) -> tuple[sitk.Image, np.ndarray]:
    """The same field of view on a grid of ``spacing`` (x, y, z mm): a Gaussian low-pass where the new
    grid is coarser (the acquisition's point spread), linear for the image, nearest for the labels."""
    old = np.array(image.GetSpacing())
    new = np.array(spacing)
    size = np.maximum(np.round(np.array(image.GetSize()) * old / new), 1).astype(int)
    # keep the field of view's centre where it was
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((np.array(image.GetSize()) - 1) / 2).tolist()))
    origin = centre - direction @ (new * (size - 1) / 2)
    sigma = np.sqrt(np.maximum(new**2 - old**2, 0.0)) / 2.355  # FWHM of the blur = the spacing gained
    blurred = sitk.DiscreteGaussian(sitk.Cast(image, sitk.sitkFloat32), (sigma**2).tolist(), 32, 0.01, True)
    grid = sitk.Image(size.tolist(), sitk.sitkFloat32)
    grid.SetSpacing(new.tolist())
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(origin.tolist())
    resampled = sitk.Resample(blurred, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    label_image = sitk.GetImageFromArray(labels.astype(np.uint8))
    label_image.CopyInformation(image)
    resampled_labels = sitk.Resample(label_image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return resampled, sitk.GetArrayFromImage(resampled_labels)


def coarser_pixels(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """In-plane pixels of 1.0-1.2 mm and slices of 1.5-2.0 or 4.0-4.5 mm (one draw per case)."""
    in_plane = float(rng.uniform(1.0, 1.2))
    thickness = float(rng.uniform(1.5, 2.0) if rng.random() < 0.5 else rng.uniform(4.0, 4.5))
    return resample(image, labels, (in_plane, in_plane, thickness))


def _superior_is_up(image: sitk.Image) -> bool:
    """Whether the slice index grows towards the head (LPS +z)."""
    return np.array(image.GetDirection()).reshape(3, 3)[2, 2] > 0


def _crop_slices(image: sitk.Image, labels: np.ndarray, first: int, last: int) -> tuple[sitk.Image, np.ndarray]:
    first, last = max(first, 0), min(last, image.GetSize()[2] - 1)
    return image[:, :, first : last + 1], labels[first : last + 1]


def _gland_slices(labels: np.ndarray) -> np.ndarray:
    return np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))


def coverage_above(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """Changed z coverage: every slice below the apex but one removed, all slices above the base kept,
    so bladder and seminal vesicles fill a larger share of the volume."""
    gland = _gland_slices(labels)
    if _superior_is_up(image):
        return _crop_slices(image, labels, gland[0] - 1, len(labels) - 1)
    return _crop_slices(image, labels, 0, gland[-1] + 1)


def tight_coverage(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """A tight z crop: the gland's slices and one more at each end."""
    gland = _gland_slices(labels)
    return _crop_slices(image, labels, gland[0] - 1, gland[-1] + 1)


def identity_header(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """Same voxels, identity direction and origin 0 (as converters that drop the orientation write)."""
    shifted = sitk.Image(image)
    shifted.SetDirection(np.eye(3).ravel().tolist())
    shifted.SetOrigin((0.0, 0.0, 0.0))
    return shifted, labels


def flipped_axes(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """Rows and slices stored in the opposite order, the header changed to match (the patient is where
    he was in physical space; the voxel array is upside down and runs head to feet)."""
    voxels = _array(image)[::-1, ::-1]
    shifted = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    shifted.SetSpacing(image.GetSpacing())
    width, height, depth = image.GetSize()
    shifted.SetOrigin(image.TransformIndexToPhysicalPoint((0, height - 1, depth - 1)))
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array([1.0, -1.0, -1.0])
    shifted.SetDirection(direction.ravel().tolist())
    return shifted, np.ascontiguousarray(labels[::-1, ::-1])


def reversed_slice_order(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """Slices stored in the opposite order, the header unchanged (a header that states the wrong slice
    direction, as a conversion that mislabels it writes): where the header puts the apex lies the base."""
    reversed_voxels = _with_voxels(np.ascontiguousarray(_array(image)[::-1]), image)
    return reversed_voxels, np.ascontiguousarray(labels[::-1])


def coil_site(image: sitk.Image, labels: np.ndarray, rng: np.random.Generator) -> tuple[sitk.Image, np.ndarray]:
    """A PROMISE12-style endorectal-coil scan: the coil field, 1.09 mm pixels and 1.6 mm slices, identity header."""
    shaded, labels = endorectal_coil(image, labels, rng)
    resampled, labels = resample(shaded, labels, (1.09, 1.09, 1.6))
    return identity_header(resampled, labels, rng)


@dataclass(frozen=True)
class AcquisitionShift:
    name: str
    apply: ShiftFunction

    @property
    def description(self) -> str:
        return " ".join((self.apply.__doc__ or "").strip().split("\n\n")[0].split())


SHIFTS = (
    AcquisitionShift("endorectal coil", endorectal_coil),
    AcquisitionShift("coil site (coil + 1.09/1.6 mm + identity header)", coil_site),
    AcquisitionShift("strong bias field", smooth_bias_field),
    AcquisitionShift("Rician noise", rician_noise),
    AcquisitionShift("gamma", gamma_contrast),
    AcquisitionShift("coarser pixels, other slices", coarser_pixels),
    AcquisitionShift("z coverage: nothing below the apex", coverage_above),
    AcquisitionShift("tight z crop", tight_coverage),
    AcquisitionShift("identity direction, origin 0", identity_header),
    AcquisitionShift("flipped rows and slices", flipped_axes),
    AcquisitionShift("slice order reversed, header unchanged", reversed_slice_order),
)


def shifted_case(shift: AcquisitionShift, image: sitk.Image, labels: np.ndarray, seed: int, case_name: str) -> tuple[sitk.Image, np.ndarray]:
    """The case under ``shift``; the same seed, shift and case always give the same result."""
    rng = np.random.default_rng([seed, *case_name.encode(), *shift.name.encode()])
    return shift.apply(image, labels, rng)


def select_shifts(names: Sequence[str]) -> tuple[AcquisitionShift, ...]:
    """The suite's shifts named (each name: a shift's name or the start of exactly one, any case), in the suite's order."""
    chosen = set()
    for name in names:
        matches = [shift for shift in SHIFTS if shift.name.lower() == name.strip().lower()] or [
            shift for shift in SHIFTS if shift.name.lower().startswith(name.strip().lower())
        ]
        if len(matches) != 1:
            known = "; ".join(shift.name for shift in SHIFTS)
            problem = "matches several of" if matches else "is not one of"
            raise InputError(f"shift {name!r} {problem} the suite's shifts: {known}")
        chosen.add(matches[0].name)
    return tuple(shift for shift in SHIFTS if shift.name in chosen)

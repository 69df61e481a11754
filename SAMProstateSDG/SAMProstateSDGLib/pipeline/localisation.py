"""Inference-time levers that make the coarse network's localisation robust to acquisition shifts.

- ``reorient``: the network reads the volume in the training data's orientation (LPS: rows run
  anterior to posterior, slices foot to head), whatever order the file stores its voxels in;
- ``n4``: SimpleITK N4 bias-field correction, estimated on a shrunk copy, before normalising;
- ``tta``: the network's probabilities averaged with those of the left-right mirrored slices;
- ``slice_order``: the network reads the slices in the header's order and in the reverse, and the
  order it is more certain in wins (its z context is directional: a header that states the wrong
  slice direction shows it the apex above the base); the reading says when that order puts superior
  and inferior against the header.

The component choice by plausibility is in ``component_choice`` (``--component-filter plausible``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..io.volume_io import normalised_array
from ..masks.boxes import CoarseOptions
from ..modeling.coarse_net import CoarseSegmenter

TRAINING_ORIENTATION = "LPS"
N4_SHRINK = 4  # in-plane shrink factor of the copy N4 estimates the field on
N4_ITERATIONS = (50, 40, 30)
CERTAIN_FROM = 0.1  # the certainty is averaged over the voxels the network gives at least this probability


def n4_corrected(image: sitk.Image) -> sitk.Image:
    """``image`` divided by N4's bias field, estimated on a copy shrunk ``N4_SHRINK`` times in-plane
    inside an Otsu body mask (on log intensities), then evaluated on the full grid."""
    full = sitk.Cast(image, sitk.sitkFloat32)
    full = sitk.Maximum(full, 0.0) + 1.0  # N4 works on logarithms: strictly positive
    shrunk = sitk.Shrink(full, [N4_SHRINK, N4_SHRINK, 1])
    body = sitk.OtsuThreshold(sitk.Log(shrunk), 0, 1, 200)  # on raw intensities Otsu keeps only the brightest (coil) region
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    corrector.Execute(shrunk, body)
    return full / sitk.Exp(corrector.GetLogBiasFieldAsImage(full))


def in_orientation(image: sitk.Image, orientation: str = TRAINING_ORIENTATION) -> sitk.Image:
    """The same image with its voxels permuted and flipped into ``orientation`` (no interpolation);
    ``image`` itself when it is stored that way already."""
    if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


def onto_grid(array: np.ndarray, source: sitk.Image, target: sitk.Image) -> np.ndarray:
    """An array on ``source``'s grid carried onto ``target``'s grid (a permutation when they differ only in voxel order)."""
    moving = sitk.GetImageFromArray(array.astype(np.float32))
    moving.CopyInformation(source)
    return sitk.GetArrayFromImage(sitk.Resample(moving, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))


SUPERIOR_INFERIOR_SWAPPED_NOTE = (
    "the coarse network found the gland with superior and inferior the other way round from the file's header (it is more "
    "certain that way); the segmentation is on the file's own grid, but check the file's orientation"
)


@dataclass(frozen=True)
class CoarseReading:
    probabilities: np.ndarray  # gland probability per voxel of the image's own grid
    header_swaps_superior_inferior: bool = False  # the slice-order check read superior and inferior against the header


def coarse_probabilities(coarse: CoarseSegmenter, image: sitk.Image, options: CoarseOptions, normalised: np.ndarray | None = None) -> np.ndarray:
    """Gland probabilities on ``image``'s own grid, with the levers of ``options`` (``coarse_reading``'s)."""
    return coarse_reading(coarse, image, options, normalised).probabilities


def coarse_reading(coarse: CoarseSegmenter, image: sitk.Image, options: CoarseOptions, normalised: np.ndarray | None = None) -> CoarseReading:
    """Gland probabilities on ``image``'s own grid, with the levers of ``options``, and whether they were read with
    superior and inferior against the header (the slice-order check).

    ``normalised`` (``normalised_array(image)``) is reused when no lever changes the voxels.
    """
    oriented = in_orientation(image) if options.reorient else image
    seen = n4_corrected(oriented) if options.n4 else oriented
    voxels = normalised if normalised is not None and seen is image else normalised_array(seen)
    canvas = coarse.canvas
    slices, slice_spacing_mm = canvas.to_canvas(voxels, seen), seen.GetSpacing()[2]
    on_canvas = _canvas_probabilities(coarse, slices, slice_spacing_mm, options.tta)
    swapped = False
    if options.slice_order and coarse.reads_z_context:
        reversed_order = _canvas_probabilities(coarse, np.ascontiguousarray(slices[::-1]), slice_spacing_mm, options.tta)[::-1]
        reversed_wins = certainty(reversed_order) > certainty(on_canvas)
        if reversed_wins:
            on_canvas = np.ascontiguousarray(reversed_order)
        # the network was trained on slices running foot to head: the order it keeps runs against the header when it
        # reversed slices the header says run foot to head (always so after reorientation), or kept slices it says do not
        swapped = reversed_wins == _slices_run_foot_to_head(seen)
    probabilities = canvas.from_canvas(on_canvas, seen)
    return CoarseReading(probabilities if oriented is image else onto_grid(probabilities, seen, image), swapped)


def _slices_run_foot_to_head(image: sitk.Image) -> bool:
    """Whether the header puts each next slice superior to the last (the slice axis's S component is positive)."""
    return image.GetDirection()[8] > 0


def _canvas_probabilities(coarse: CoarseSegmenter, slices: np.ndarray, slice_spacing_mm: float, tta: bool) -> np.ndarray:
    on_canvas = coarse.canvas_probabilities(slices, slice_spacing_mm)
    if not tta:
        return on_canvas
    mirrored = coarse.canvas_probabilities(np.ascontiguousarray(slices[:, :, ::-1]), slice_spacing_mm)[:, :, ::-1]
    return (on_canvas + mirrored) / 2


def certainty(probabilities: np.ndarray) -> float:
    """How sure the network is: the mean of |2p - 1| over the voxels where p >= ``CERTAIN_FROM`` (0 where none)."""
    considered = probabilities[probabilities >= CERTAIN_FROM]
    return float(np.abs(2 * considered - 1).mean()) if considered.size else 0.0

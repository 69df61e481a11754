"""Fixed-field-of-view input grids: every slice resampled to a fixed pixel spacing and size.

The grid keeps the volume's slices and orientation and is centred on the middle of each
slice, so sites with different fields of view and resolutions look alike to a network. The
coarse network reads a 1 mm, 160 pixel canvas; the self-prompting SAM methods (DeSAM, SAMed)
read a 128 mm canvas at the encoder's input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Canvas:
    """In-plane spacing (mm) and size (pixels) of a network's input (the coarse network's by default)."""

    spacing_mm: float = 1.0
    size: int = 160

    def grid_for(self, image: sitk.Image) -> sitk.Image:
        """An empty image on the canvas grid, slice for slice aligned with ``image``."""
        width, height, depth = image.GetSize()
        direction = np.array(image.GetDirection()).reshape(3, 3)
        centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((width - 1) / 2, (height - 1) / 2, 0.0)))
        spacing = np.array([self.spacing_mm, self.spacing_mm, image.GetSpacing()[2]])
        half_extent = np.array([(self.size - 1) / 2, (self.size - 1) / 2, 0.0])
        grid = sitk.Image([self.size, self.size, depth], sitk.sitkFloat32)
        grid.SetDirection(image.GetDirection())
        grid.SetSpacing(spacing.tolist())
        grid.SetOrigin((centre - direction @ (spacing * half_extent)).tolist())
        return grid

    def to_canvas(self, array: np.ndarray, image: sitk.Image, nearest: bool = False) -> np.ndarray:
        """Resample an array on ``image``'s grid ([slices, rows, columns]) onto the canvas."""
        return _resample(array, image, self.grid_for(image), nearest)

    def from_canvas(self, array: np.ndarray, image: sitk.Image) -> np.ndarray:
        """Resample a canvas array (e.g. probabilities) back onto ``image``'s grid (linear)."""
        return _resample(array, self.grid_for(image), image, nearest=False)


ENCODER_FIELD_OF_VIEW_MM = 128.0  # every gland edge of the 41 training and test cases lies within 50 mm of the slice centre


def encoder_canvas(image_size: int) -> Canvas:
    """The SAM encoder's input for self-prompting methods: the gland is as large in encoder pixels at every site."""
    return Canvas(ENCODER_FIELD_OF_VIEW_MM / image_size, image_size)


def _resample(array: np.ndarray, source: sitk.Image, target: sitk.Image, nearest: bool) -> np.ndarray:
    moving = sitk.GetImageFromArray(array.astype(np.float32))
    moving.CopyInformation(source)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    resampled = sitk.Resample(moving, target, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)

"""Generic single-source domain-generalisation augmentations for 2D slices (MONAI dictionary transforms).

Three families MONAI does not have: global intensity non-linear augmentation (GIN, Ouyang et al.,
causality-inspired single-source domain generalisation), anisotropic loss of resolution, and
random smooth multiplicative fields built from Gaussian bumps and a ramp (bright on one side,
dark on another, with saturation). All change the image only; the label keeps its grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as functional
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    OneOf,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandomizableTransform,
    Resize,
    ScaleIntensityRangePercentilesd,
)


class _RandomImageTransformd(RandomizableTransform, MapTransform):
    """One random draw per call (``randomize``), applied to every key's image by ``apply``."""

    def __init__(self, keys: KeysCollection, prob: float) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)

    def apply(self, image):
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        result = dict(data)
        self.randomize(None)  # every subclass's randomize(data=None) ignores data
        if not self._do_transform:
            return result
        for key in self.key_iterator(result):
            result[key] = self.apply(result[key])
        return result


class RandGlobalIntensityNonlineard(_RandomImageTransformd):
    """GIN: a shallow convolutional net with fresh random weights remaps the intensities.

    ``layers`` convolutions (kernel 1 or 3 at random, ``channels`` intermediate channels,
    weights and biases ~ N(0, 1), leaky ReLU between them) give a new appearance of the same
    anatomy (contrast may invert); it is mixed with the image by a random weight in [0, 1] and
    rescaled to 0..1. Geometry is untouched: every kernel is centred and the padding keeps the size.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.5, layers: int = 4, channels: int = 2) -> None:
        super().__init__(keys, prob)
        self.layers, self.channels = layers, channels
        self._seed, self._mix = 0, 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))
        self._mix = float(self.R.uniform(0.0, 1.0))

    def remap(self, image: torch.Tensor) -> torch.Tensor:
        """[channels, rows, columns] in 0..1 through this draw's random net, each channel alike."""
        generator = torch.Generator().manual_seed(self._seed)
        kernels = [1 if torch.rand(1, generator=generator).item() < 0.5 else 3 for _ in range(self.layers)]
        widths = [1] + [self.channels] * (self.layers - 1) + [1]
        weights = [torch.randn(widths[i + 1], widths[i], k, k, generator=generator) for i, k in enumerate(kernels)]
        biases = [torch.randn(widths[i + 1], generator=generator) for i in range(self.layers)]
        values = image.float()[:, None]  # each input channel (a slice) on its own through the same net
        for index, (weight, bias) in enumerate(zip(weights, biases)):
            values = functional.conv2d(values, weight, bias, padding=weight.shape[-1] // 2)
            if index < self.layers - 1:
                values = functional.leaky_relu(values, 0.2)
        mixed = self._mix * values[:, 0] + (1 - self._mix) * image.float()
        low = mixed.amin(dim=(-2, -1), keepdim=True)
        high = mixed.amax(dim=(-2, -1), keepdim=True)
        return (mixed - low) / (high - low).clamp_min(1e-6)

    def apply(self, image):
        remapped = self.remap(torch.as_tensor(image))
        return type(image)(remapped) if isinstance(image, torch.Tensor) else remapped.numpy()


class RandAnisotropicLowResolutiond(_RandomImageTransformd):
    """A coarser acquisition: the slice resampled to random pixel sizes per axis (``spacing_range``
    times the canvas spacing) with area averaging, then back to its size with bilinear interpolation."""

    def __init__(self, keys: KeysCollection, prob: float = 0.3, spacing_range: Sequence[float] = (1.0, 2.0)) -> None:
        super().__init__(keys, prob)
        self.spacing_range = cast(tuple[float, float], tuple(spacing_range))  # (finest, coarsest) factor
        self._factors: tuple[float, ...] = (1.0, 1.0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._factors = tuple(float(self.R.uniform(*self.spacing_range)) for _ in range(2))

    def apply(self, image):
        size = image.shape[1:]
        coarse = tuple(max(2, int(round(length / factor))) for length, factor in zip(size, self._factors))
        return Resize(size, mode="bilinear", align_corners=False)(Resize(coarse, mode="area")(image))



class RandSmoothGainFieldd(_RandomImageTransformd):
    """A random smooth multiplicative field: image x exp(log-gain), then saturation.

    The log-gain is a random linear ramp (slope up to ``ramp`` per half canvas, random direction)
    plus ``bumps`` Gaussian bumps with random centres (anywhere within 1.2 half-canvases of the
    middle, so also just outside), widths (``width_range`` times the canvas side) and log-gains of
    either sign (``log_gain_range``). Intensities above a random quantile of the result
    (``saturation_quantile``) are clipped to it, as a saturated receiver does. Nothing here knows
    where the anatomy is: the field is drawn from the canvas alone.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        bumps: tuple[int, int] = (1, 3),
        width_range: tuple[float, float] = (0.08, 0.4),
        log_gain_range: tuple[float, float] = (-3.0, 3.0),
        ramp: float = 1.5,
        saturation_quantile: tuple[float, float] = (0.9, 1.0),
    ) -> None:
        super().__init__(keys, prob)
        self.bumps, self.width_range, self.log_gain_range = bumps, width_range, log_gain_range
        self.ramp, self.saturation_quantile = ramp, saturation_quantile
        self._ramp = (0.0, 0.0)
        self._bumps: list[tuple[float, float, float, float]] = []  # (row centre, column centre, width, log-gain)
        self._quantile = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        angle, slope = self.R.uniform(0, 2 * np.pi), self.R.uniform(0, self.ramp)
        self._ramp = (float(slope * np.sin(angle)), float(slope * np.cos(angle)))
        count = int(self.R.randint(self.bumps[0], self.bumps[1] + 1))
        self._bumps = [
            (
                float(self.R.uniform(-1.2, 1.2)),
                float(self.R.uniform(-1.2, 1.2)),
                float(self.R.uniform(*self.width_range)),
                float(self.R.uniform(*self.log_gain_range)),
            )
            for _ in range(count)
        ]
        self._quantile = float(self.R.uniform(*self.saturation_quantile))

    def log_gain(self, size: Sequence[int]) -> torch.Tensor:
        """This draw's log-gain on a [rows, columns] grid (coordinates -1..1 across each axis)."""
        rows, columns = torch.meshgrid(torch.linspace(-1, 1, size[0]), torch.linspace(-1, 1, size[1]), indexing="ij")
        field = self._ramp[0] * rows + self._ramp[1] * columns
        for row, column, width, gain in self._bumps:
            field = field + gain * torch.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * (2 * width) ** 2))
        return field

    def apply(self, image):
        values = torch.as_tensor(image).float()
        shaded = values * torch.exp(self.log_gain(values.shape[-2:]))
        ceiling = torch.quantile(shaded.flatten(), self._quantile) if self._quantile < 1.0 else shaded.max()
        shaded = torch.minimum(shaded, ceiling)
        return type(image)(shaded) if isinstance(image, torch.Tensor) else shaded.numpy()


def dg_appearance() -> list:
    """The appearance half of the DG augmentation (the image changes, its grid and the label do not): anisotropic
    loss of resolution (1-2 pixels), strong smooth bias fields of random shape and both polarities, random smooth
    gain fields, random monotone curves and gamma, GIN random convolutions, blur and noise; the image ends in 0..1.
    Each draw treats the channels alike, so a volume given as [slices, rows, columns] changes as one acquisition."""
    renormalise = ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    return [
        RandAnisotropicLowResolutiond("image", prob=0.35, spacing_range=(1.0, 2.0)),
        OneOf(
            [
                RandBiasFieldd("image", prob=0.6, degree=2, coeff_range=(-0.8, 0.8)),
                RandBiasFieldd("image", prob=0.6, degree=3, coeff_range=(-0.6, 0.6)),
                RandBiasFieldd("image", prob=0.6, degree=4, coeff_range=(-0.5, 0.5)),
            ]
        ),
        RandSmoothGainFieldd("image", prob=0.5),
        renormalise,
        RandHistogramShiftd("image", prob=0.3, num_control_points=(4, 10)),
        RandAdjustContrastd("image", prob=0.4, gamma=(0.4, 2.5)),
        RandGlobalIntensityNonlineard("image", prob=0.5, layers=4, channels=2),
        RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        RandGaussianNoised("image", prob=0.3, std=0.04),
        renormalise,
    ]

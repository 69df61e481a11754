"""Generic single-source domain-generalisation augmentations for 2D slices (MONAI dictionary transforms).

Two families MONAI does not have: global intensity non-linear augmentation (GIN, Ouyang et al.,
causality-inspired single-source domain generalisation) and anisotropic loss of resolution.
Both change the image only; the label keeps its grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as functional
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Resize


class _RandomImageTransformd(RandomizableTransform, MapTransform):
    """One random draw per call (``randomize``), applied to every key's image by ``apply``."""

    def __init__(self, keys: KeysCollection, prob: float) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)

    def apply(self, image):
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        result = dict(data)
        self.randomize()
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
        self.spacing_range = tuple(spacing_range)
        self._factors = (1.0, 1.0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._factors = tuple(float(self.R.uniform(*self.spacing_range)) for _ in range(2))

    def apply(self, image):
        size = image.shape[1:]
        coarse = tuple(max(2, int(round(length / factor))) for length, factor in zip(size, self._factors))
        return Resize(size, mode="bilinear", align_corners=False)(Resize(coarse, mode="area")(image))


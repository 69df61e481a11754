"""The coarse segmentation network: a 2D U-Net with a ResNet encoder (MONAI FlexibleUNet)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.networks.layers.simplelayers import gaussian_1d, separable_filtering
from monai.networks.nets import FlexibleUNet
from scipy import ndimage

from ..core.catalog import COARSE_INPUT_REPRESENTATIONS
from ..core.checksums import full_precision, half_precision, int8_per_channel, load_state_strictly, load_weights
from ..core.errors import InputError
from ..core.files import write_atomically
from ..masks.canvas import Canvas


@dataclass(frozen=True)
class CoarseNetConfig:
    """Architecture and input grid; stored in every checkpoint so it rebuilds the same net."""

    backbone: str = "resnet18"
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)
    canvas: Canvas = field(default_factory=Canvas)
    input_representation: str = "intensity"  # or "log-contrast" (see ``log_contrast``)
    contrast_sigma_mm: float = 8.0  # the local window of ``log-contrast``
    context_mm: float = 0.0  # > 0: the volume this far above and below the slice as two more channels

    @property
    def in_channels(self) -> int:
        return 3 if self.context_mm > 0 else 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CoarseNetConfig:
        defaults = cls()
        return cls(
            backbone=data["backbone"],
            decoder_channels=tuple(data["decoder_channels"]),
            canvas=Canvas(**data["canvas"]),
            input_representation=data.get("input_representation", defaults.input_representation),
            contrast_sigma_mm=data.get("contrast_sigma_mm", defaults.contrast_sigma_mm),
            context_mm=data.get("context_mm", defaults.context_mm),
        )


LOG_FLOOR = 0.01  # of the 0..1 slice: air and padding stay finite in the log
SPREAD_FLOOR = 0.05  # in log units: flat regions are not blown up to noise


def log_contrast(slices: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Log intensity minus its local (Gaussian) mean, over its local standard deviation.

    A smooth multiplicative field (an endorectal coil, a bias field) is nearly constant in the log over
    the window and cancels; a power-law contrast change scales the log and cancels in the ratio.
    """
    kernel = gaussian_1d(torch.tensor(sigma_px), truncated=3.0).to(slices)
    kernels = [kernel, kernel]
    logarithm = torch.log(slices.clamp(min=0.0) + LOG_FLOOR)
    centred = logarithm - separable_filtering(logarithm, kernels, mode="reflect")
    spread = separable_filtering(centred**2, kernels, mode="reflect").sqrt()
    return centred / (spread + SPREAD_FLOOR)


def with_context(slices: np.ndarray, slice_spacing_mm: float, context_mm: float) -> np.ndarray:
    """[slices, 1 or 3, rows, columns]: each slice alone, or between the volume ``context_mm`` below and
    above it (linear along z, the end slices repeated past the volume), whatever the slice spacing."""
    if context_mm <= 0:
        return slices[:, None]
    offset = context_mm / slice_spacing_mm
    below, above = (ndimage.shift(slices, (shift, 0, 0), order=1, mode="nearest") for shift in (offset, -offset))
    return np.stack([below, slices, above], axis=1)


class CoarseNet(FlexibleUNet):
    """MONAI's FlexibleUNet reading the configured input representation (no extra weights)."""

    def __init__(self, config: CoarseNetConfig):
        if config.input_representation not in COARSE_INPUT_REPRESENTATIONS:
            raise ValueError(f"unknown input representation {config.input_representation!r}")
        super().__init__(
            in_channels=config.in_channels,
            out_channels=1,
            backbone=config.backbone,
            pretrained=False,
            spatial_dims=2,
            decoder_channels=config.decoder_channels,
        )
        sigma_px = config.contrast_sigma_mm / config.canvas.spacing_mm
        self.represent = partial(log_contrast, sigma_px=sigma_px) if config.input_representation == "log-contrast" else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs if self.represent is None else self.represent(inputs))


def build_coarse_net(config: CoarseNetConfig) -> CoarseNet:
    """The normalised T2 slice (0..1; with its z context when configured) in, one output logit (gland) out."""
    return CoarseNet(config)


class CoarseSegmenter:
    """Gland probabilities for a whole volume, on the volume's own grid.

    One network, or an ensemble whose probabilities are averaged (networks reading different input
    representations of the same canvas: their errors under an acquisition shift differ).
    """

    def __init__(self, networks: Sequence[CoarseNet], configs: Sequence[CoarseNetConfig], device: torch.device):
        if len({config.canvas for config in configs}) != 1 or len(networks) != len(configs):
            raise ValueError("the networks of a coarse ensemble must read the same canvas")
        self.networks = [network.to(device).eval() for network in networks]
        self.configs = list(configs)
        self.canvas = configs[0].canvas
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, sha256: str | None = None) -> CoarseSegmenter:
        members = load_coarse_members(path, sha256)
        return cls([network for network, _ in members], [config for _, config in members], device)

    @property
    def reads_z_context(self) -> bool:
        """Whether a network sees the slices above and below (and so the slice order)."""
        return any(config.context_mm > 0 for config in self.configs)

    @torch.inference_mode()
    def canvas_probabilities(self, canvas_slices: np.ndarray, slice_spacing_mm: float, batch_size: int = 8) -> np.ndarray:
        """Mean sigmoid output of the networks for a volume's slices already on the canvas ([slices, size, size], 0..1)."""
        contexts = {config.context_mm: with_context(canvas_slices, slice_spacing_mm, config.context_mm) for config in self.configs}
        inputs = [contexts[config.context_mm] for config in self.configs]  # built once per distinct z context
        outputs = []
        for start in range(0, len(canvas_slices), batch_size):
            batches = [torch.from_numpy(member[start : start + batch_size]).to(self.device).float() for member in inputs]
            probabilities = torch.stack([torch.sigmoid(network(batch)) for network, batch in zip(self.networks, batches)]).mean(dim=0)
            outputs.append(probabilities[:, 0].float().cpu().numpy())
        return np.concatenate(outputs)

    def probabilities(self, normalised: np.ndarray, image: sitk.Image) -> np.ndarray:
        """Gland probability per voxel of ``image`` from its normalised voxels."""
        slices = self.canvas.to_canvas(normalised, image)
        return self.canvas.from_canvas(self.canvas_probabilities(slices, image.GetSpacing()[2]), image)


def save_coarse_checkpoint(path: str | Path, network: torch.nn.Module, config: CoarseNetConfig) -> None:
    """Weights in half precision (they are small and the net is evaluated in float32), written atomically."""
    checkpoint = {"config": json.dumps(config.to_json()), "state_dict": half_precision(network.state_dict())}
    write_atomically(path, lambda temporary: torch.save(checkpoint, temporary))


def save_coarse_ensemble(path: str | Path, members: Sequence[str | Path]) -> None:
    """One checkpoint holding several trained coarse networks (each as ``save_coarse_checkpoint`` wrote it),
    their weights stored as int8 per output channel (half the size of fp16; see ``int8_per_channel``)."""
    checkpoints = [load_weights(member, "coarse-model checkpoint") for member in members]  # each file read once
    for member, checkpoint in zip(members, checkpoints):
        _single_network(member, checkpoint)  # refuse anything but a single, loadable network
        checkpoint["state_dict"] = int8_per_channel(full_precision(checkpoint["state_dict"]))
    write_atomically(path, lambda temporary: torch.save({"members": checkpoints}, temporary))


def load_coarse_members(path: str | Path, sha256: str | None = None) -> list[tuple[CoarseNet, CoarseNetConfig]]:
    """The network(s) of a coarse checkpoint: one, or an ensemble's members."""
    return [_coarse_network(path, member) for member in _members(load_weights(path, "coarse-model checkpoint", sha256))]


def load_coarse_checkpoint(path: str | Path, sha256: str | None = None) -> tuple[CoarseNet, CoarseNetConfig]:
    """The network of a single-network coarse checkpoint (what train-coarse writes)."""
    return _single_network(path, load_weights(path, "coarse-model checkpoint", sha256))


def _members(checkpoint) -> list:
    return checkpoint["members"] if isinstance(checkpoint, dict) and "members" in checkpoint else [checkpoint]


def _single_network(path: str | Path, checkpoint) -> tuple[CoarseNet, CoarseNetConfig]:
    members = _members(checkpoint)
    if len(members) != 1:
        raise InputError(f"{path} is an ensemble of {len(members)} coarse networks; give one network's checkpoint")
    return _coarse_network(path, members[0])


def _coarse_network(path: str | Path, checkpoint: dict) -> tuple[CoarseNet, CoarseNetConfig]:
    try:
        config = CoarseNetConfig.from_json(json.loads(checkpoint["config"]))
        state = full_precision(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        reason = f"no {error} entry" if isinstance(error, KeyError) else str(error)
        raise InputError(f"{path} is not a coarse-model checkpoint: {reason}") from None
    try:
        network = build_coarse_net(config)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} describes a coarse network this version cannot build (backbone {config.backbone!r}, input {config.input_representation!r}): {error}") from None
    load_state_strictly(network, state, f"{path} does not match the coarse network ({config.backbone})")
    return network, config

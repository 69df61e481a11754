"""The coarse segmentation network: a 2D U-Net with a ResNet encoder (MONAI FlexibleUNet)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.networks.nets import FlexibleUNet

from ..core.checksums import full_precision, half_precision, load_state_strictly, load_weights
from ..core.errors import InputError
from ..core.files import write_atomically
from ..masks.canvas import Canvas


@dataclass(frozen=True)
class CoarseNetConfig:
    """Architecture and input grid; stored in every checkpoint so it rebuilds the same net."""

    backbone: str = "resnet18"
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)
    canvas: Canvas = field(default_factory=Canvas)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CoarseNetConfig:
        return cls(
            backbone=data["backbone"],
            decoder_channels=tuple(data["decoder_channels"]),
            canvas=Canvas(**data["canvas"]),
        )


def build_coarse_net(config: CoarseNetConfig) -> FlexibleUNet:
    """One input channel (the normalised T2 slice), one output logit (gland)."""
    return FlexibleUNet(
        in_channels=1,
        out_channels=1,
        backbone=config.backbone,
        pretrained=False,
        spatial_dims=2,
        decoder_channels=config.decoder_channels,
    )


class CoarseSegmenter:
    """Gland probabilities for a whole volume, on the volume's own grid."""

    def __init__(self, network: FlexibleUNet, config: CoarseNetConfig, device: torch.device):
        self.network = network.to(device).eval()
        self.config = config
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, sha256: str | None = None) -> CoarseSegmenter:
        network, config = load_coarse_checkpoint(path, sha256)
        return cls(network, config, device)

    @torch.inference_mode()
    def canvas_probabilities(self, canvas_slices: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Sigmoid outputs for slices already on the canvas ([slices, size, size], 0..1)."""
        outputs = []
        for start in range(0, len(canvas_slices), batch_size):
            batch = torch.from_numpy(canvas_slices[start : start + batch_size, None]).to(self.device)
            outputs.append(torch.sigmoid(self.network(batch.float()))[:, 0].float().cpu().numpy())
        return np.concatenate(outputs)

    def probabilities(self, normalised: np.ndarray, image: sitk.Image) -> np.ndarray:
        """Gland probability per voxel of ``image`` from its normalised voxels."""
        canvas = self.config.canvas
        return canvas.from_canvas(self.canvas_probabilities(canvas.to_canvas(normalised, image)), image)


def save_coarse_checkpoint(path: str | Path, network: torch.nn.Module, config: CoarseNetConfig) -> None:
    """Weights in half precision (they are small and the net is evaluated in float32), written atomically."""
    checkpoint = {"config": json.dumps(config.to_json()), "state_dict": half_precision(network.state_dict())}
    write_atomically(path, lambda temporary: torch.save(checkpoint, temporary))


def load_coarse_checkpoint(path: str | Path, sha256: str | None = None) -> tuple[FlexibleUNet, CoarseNetConfig]:
    checkpoint = load_weights(path, "coarse-model checkpoint", sha256)
    try:
        config = CoarseNetConfig.from_json(json.loads(checkpoint["config"]))
        state = full_precision(checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        reason = f"no {error} entry" if isinstance(error, KeyError) else str(error)
        raise InputError(f"{path} is not a coarse-model checkpoint: {reason}") from None
    try:
        network = build_coarse_net(config)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} describes a coarse network this version cannot build (backbone {config.backbone!r}): {error}") from None
    load_state_strictly(network, state, f"{path} does not match the coarse network ({config.backbone})")
    return network, config

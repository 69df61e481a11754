"""DeSAM: SAM's mask decoder decoupled so that automatic prompts cannot ruin the mask (Gao et al. 2023).

- PRIM, the prompt-relevant IoU module: SAM's two-way transformer and IoU head (initialised from
  the base model's decoder, its mask head removed). It turns a prompt into mask embeddings (the
  prompt-conditioned image tokens and their similarity to the mask token) and a predicted IoU.
- PIMM, the prompt-invariant mask module: squeeze-and-excitation residual blocks that fuse the
  image embedding, the mask embeddings and the encoder's intermediate features at the bottleneck,
  then upsample with skip connections from the encoder's higher-resolution stages to SAM's
  low-resolution mask frame (4 × the embedding size).

Grid mode prompts each slice with an N × N grid of points. The point nearest the slice centre (the
encoder canvas is centred on the slice, and so, in pelvic MRI, nearly always on the gland) gives an
anchor mask; the masks of all points inside it are averaged with their predicted IoU as weights.
Box mode prompts each slice with the whole slice.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from monai.networks.blocks import SEBlock
from segment_anything.modeling import MaskDecoder, Sam
from torch import nn

from ..core.catalog import DEFAULT_GRID_SIDE
from ..core.checksums import load_trained_weights
from .encoder_stages import EncoderFeatures, EncoderStages
from .sam_engine import SamEngine

DESAM_MODES = ("grid", "box")
PIMM_CHUNK = 8  # grid points decoded at once: PIMM's upsampled features take ~16 MB per prompt


class PromptRelevantIoUModule(nn.Module):
    """SAM's prompt-token transformer and IoU head: prompt → mask embeddings [B, C+1, h, w] and IoU [B, 1]."""

    def __init__(self, decoder: MaskDecoder):
        super().__init__()
        self.transformer = copy.deepcopy(decoder.transformer)
        self.iou_token = copy.deepcopy(decoder.iou_token)
        self.mask_token = nn.Parameter(decoder.mask_tokens.weight[:1].detach().clone())
        self.iou_prediction_head = copy.deepcopy(decoder.iou_prediction_head)

    @property
    def mask_embedding_channels(self) -> int:
        return self.mask_token.shape[1] + 1

    def forward(self, embedding, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, height, width = embedding.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_token]).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse], dim=1)
        states, image_tokens = self.transformer(embedding + dense, image_pe.expand(batch, -1, -1, -1), tokens)
        image_map = image_tokens.transpose(1, 2).reshape(batch, channels, height, width)
        similarity = torch.einsum("bc,bchw->bhw", states[:, 1], image_map)[:, None] / math.sqrt(channels)
        iou = self.iou_prediction_head(states[:, 0])[:, :1]
        return torch.cat([image_map, similarity], dim=1), iou


class PromptInvariantMaskModule(nn.Module):
    """SE residual blocks and upsampling from the embedding's size to 4 × it, fusing encoder skips."""

    def __init__(self, embedding_channels: int, mask_embedding_channels: int, skip_channels: list[int], skip_scales: list[int], width: int = 128):
        super().__init__()
        self.skip_scales = skip_scales
        bottleneck_in = embedding_channels + mask_embedding_channels + sum(c for c, s in zip(skip_channels, skip_scales) if s == 1)
        self.bottleneck = nn.Sequential(nn.Conv2d(bottleneck_in, width, 1), _se_block(width), _se_block(width))
        self.up_blocks = nn.ModuleList()
        self.fuse_blocks = nn.ModuleList()
        channels = width
        for scale in (2, 4):
            self.up_blocks.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
            channels //= 2
            fused_in = channels + sum(c for c, s in zip(skip_channels, skip_scales) if s == scale)
            self.fuse_blocks.append(nn.Sequential(nn.Conv2d(fused_in, channels, 1), _se_block(channels)))
        self.head = nn.Conv2d(channels, 1, 1)

    def forward(self, features: EncoderFeatures, mask_embeddings: torch.Tensor) -> torch.Tensor:
        batch = mask_embeddings.shape[0]
        skips = [skip.expand(batch, -1, -1, -1) for skip in features.skips]
        x = torch.cat([features.embedding.expand(batch, -1, -1, -1), mask_embeddings, *self._skips(skips, 1)], dim=1)
        x = self.bottleneck(x)
        for scale, up, fuse in zip((2, 4), self.up_blocks, self.fuse_blocks):
            x = fuse(torch.cat([up(x), *self._skips(skips, scale)], dim=1))
        return self.head(x)

    def _skips(self, skips: list[torch.Tensor], scale: int) -> list[torch.Tensor]:
        return [skip for skip, skip_scale in zip(skips, self.skip_scales) if skip_scale == scale]


class DeSAM(nn.Module):
    """PRIM + PIMM on top of a frozen SAM image encoder and prompt encoder."""

    def __init__(self, sam: Sam):
        super().__init__()
        stages = EncoderStages(sam)
        self.prim = PromptRelevantIoUModule(sam.mask_decoder)
        self.pimm = PromptInvariantMaskModule(
            sam.prompt_encoder.embed_dim, self.prim.mask_embedding_channels, stages.skip_channels(), stages.skip_scales()
        )
        self.requires_grad_(True)  # PRIM's parts are copies of SAM's, which may be frozen

    def forward(self, features: EncoderFeatures, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits [B, 1, 4h, 4w] and predicted IoU [B, 1] for B prompts on one or B images."""
        mask_embeddings, iou = self.prim(features.embedding.expand(len(sparse), -1, -1, -1), image_pe, sparse, dense)
        return self.pimm(features, mask_embeddings), iou


def grid_points(side: int, shape: tuple[int, int]) -> np.ndarray:
    """An ``side`` × ``side`` grid of (x, y) points at the centres of equal cells of a ``shape`` slice."""
    offsets = (np.arange(side) + 0.5) / side
    xs, ys = np.meshgrid(offsets * shape[1], offsets * shape[0])
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def central_point(points: np.ndarray, shape: tuple[int, int]) -> int:
    """The index of the (x, y) point nearest the centre of a ``shape`` slice."""
    return int(np.argmin(((points - [shape[1] / 2, shape[0] / 2]) ** 2).sum(axis=1)))


def _se_block(channels: int) -> SEBlock:
    """MONAI's SE-ResNet bottleneck block: 1×1 → 3×3 → 1×1 convolutions, squeeze-and-excitation, residual."""
    return SEBlock(2, channels, channels // 2, channels // 2, channels)


class DeSAMSegmenter:
    """Segments encoded slices with a DeSAM model, prompted automatically (grid points or the whole slice)."""

    def __init__(self, engine: SamEngine, model: DeSAM, mode: str = "grid", grid_side: int = DEFAULT_GRID_SIDE):
        if mode not in DESAM_MODES:
            raise ValueError(f"unknown DeSAM mode {mode!r}; choose one of {', '.join(DESAM_MODES)}")
        self.engine, self.model, self.mode, self.grid_side = engine, model.to(engine.device), mode, grid_side

    def prompt_embeddings(self, points: np.ndarray | None, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense prompt embeddings: one positive point per row of ``points``, or the whole slice as a box."""
        transform, device = self.engine.transform, self.engine.device
        if points is None:
            boxes = torch.cat([transform.apply_boxes_torch(torch.tensor([[0, 0, s[1] - 1, s[0] - 1]], dtype=torch.float32, device=device), s) for s in shapes])
            return self.engine.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        point_tensor = torch.as_tensor(np.asarray(points), dtype=torch.float32, device=device)[:, None]
        coordinates = torch.cat([transform.apply_coords_torch(point[None], shape) for point, shape in zip(point_tensor, shapes)])
        labels = torch.ones(len(point_tensor), 1, dtype=torch.int, device=device)
        return self.engine.sam.prompt_encoder(points=(coordinates, labels), boxes=None, masks=None)

    def __call__(self, features: EncoderFeatures, points: np.ndarray | None, shapes: list[tuple[int, int]]):
        """Low-resolution logits and predicted IoU for a batch of prompts (on one slice, or one per slice)."""
        sparse, dense = self.prompt_embeddings(points, shapes)
        return self.model(features, self.engine.sam.prompt_encoder.get_dense_pe(), sparse, dense)

    def segment_volume(self, volume) -> np.ndarray:
        """Gland labels (uint8 0/1) of every slice of a pipeline.PreparedVolume, on its own grid."""
        features = volume.encoder_features()
        shape = volume.on_canvas().shape[1:]
        probabilities = np.stack([self.slice_probability(features.slices([index]), shape) for index in range(len(features.embedding))])
        return (volume.from_canvas(probabilities) > 0.5).astype(np.uint8)

    def segment_slice(self, features: EncoderFeatures, shape: tuple[int, int]) -> np.ndarray:
        """The gland mask (bool [rows, columns]) of one encoded slice."""
        return self.slice_probability(features, shape) > 0.5

    @torch.no_grad()
    def slice_probability(self, features: EncoderFeatures, shape: tuple[int, int]) -> np.ndarray:
        """Gland probabilities (float32 [rows, columns]) of one encoded slice of ``shape``."""
        if self.mode == "box":
            probability = torch.sigmoid(self(features, None, [shape])[0])
        else:
            probability = self._grid_probability(features, shape)
        resized = self.engine.sam.postprocess_masks(probability, self.engine.input_size(shape), shape)
        return resized[0, 0].float().cpu().numpy()

    def _grid_probability(self, features: EncoderFeatures, shape: tuple[int, int]) -> torch.Tensor:
        """Low-resolution probability [1, 1, h, w]: the centre point's mask anchors which grid points count.

        Points outside the anchor are never decoded: PRIM and PIMM run only for the points inside it."""
        points = grid_points(self.grid_side, shape)
        centre = central_point(points, shape)
        anchors, centre_iou = self._point_masks(features, points[[centre]], shape)
        anchor = anchors[0]
        scale = anchor.shape[-1] / self.engine.sam.image_encoder.img_size
        columns, rows = (self.engine.transform.apply_coords(points, shape) * scale).astype(int).clip(0, anchor.shape[-1] - 1).T
        inside = [int(index) for index in np.flatnonzero(anchor[rows, columns].cpu().numpy() > 0.5) if index != centre]
        weight = centre_iou[0].clamp(min=1e-3)
        total, weights = anchor * weight, weight
        for start in range(0, len(inside), PIMM_CHUNK):
            probabilities, iou = self._point_masks(features, points[inside[start : start + PIMM_CHUNK]], shape)
            part_weights = iou.clamp(min=1e-3)
            total = total + (probabilities * part_weights[:, None, None]).sum(0)
            weights = weights + part_weights.sum()
        return (total / weights)[None, None]

    def _point_masks(self, features: EncoderFeatures, points: np.ndarray, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution probabilities [K, h, w] and predicted IoU [K] of K single-point prompts on one slice."""
        logits, iou = self(features, points, [shape] * len(points))
        return torch.sigmoid(logits)[:, 0], iou[:, 0]


def load_desam(sam: Sam, checkpoint, sha256: str | None = None) -> DeSAM:
    """A DeSAM for this SAM with trained PRIM and PIMM weights (strict keys)."""
    return load_trained_weights(DeSAM(sam), checkpoint, "DeSAM", sha256)

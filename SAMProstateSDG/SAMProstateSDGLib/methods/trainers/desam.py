"""DeSAM training on cached encoder features: PRIM and PIMM learn, the SAM encoders stay frozen.

Grid mode: each slice is prompted with two positive points, each drawn inside or outside the gland
1:1 (always outside on slices without gland); the target is the whole gland whatever the point,
and the loss is Dice + CE + 10 × MSE between predicted and actual IoU + 10 × the variance of the
two points' mask probabilities, so that PIMM learns to give every point of a grid the same mask.
Box mode: the prompt is the whole slice and the loss Dice + CE.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from monai.losses import DiceCELoss

from ...modeling.desam import DeSAM, DeSAMSegmenter
from ...modeling.encoder_stages import EncoderFeatures
from ...modeling.sam_engine import SamEngine
from ...training.embedding_cache import CachedCase
from ...training.loop import FineTuningMethod, SliceSample, TrainingOptions
from .sammed import low_resolution_target

IOU_LOSS_WEIGHT = 10.0
POINTS_PER_SLICE = 2  # grid mode: prompts drawn per slice, whose masks the consistency term makes agree
CONSISTENCY_WEIGHT = 10.0
VALIDATION_GRID_SIDE = 3  # a 3 × 3 grid keeps per-epoch validation to about a minute on a CPU


def slice_features(case: CachedCase, indices: list[int], device: torch.device) -> EncoderFeatures:
    features = EncoderFeatures(case.embeddings, case.skips).slices(indices)
    return EncoderFeatures(features.embedding.to(device).float(), [skip.to(device).float() for skip in features.skips])


def random_point(mask: np.ndarray, inside: bool, generator: random.Random) -> tuple[float, float]:
    """A pixel centre (x, y) inside the mask, or outside it."""
    rows, columns = np.nonzero(mask if inside else ~mask)
    pick = generator.randrange(len(rows))
    return float(columns[pick]) + 0.5, float(rows[pick]) + 0.5


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU [B, 1] of thresholded logits with the target; 1 when both are empty."""
    prediction = logits > 0
    truth = target > 0.5
    intersection = (prediction & truth).flatten(1).sum(1).float()
    union = (prediction | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))[:, None]


class DeSAMMethod(FineTuningMethod):
    """PRIM + PIMM learn from every slice of the source site."""

    cached_features = ("embeddings", "skips")
    encoder_grid = "canvas"

    def __init__(self, engine: SamEngine, mode: str):
        self.engine = engine
        for parameter in engine.sam.parameters():
            parameter.requires_grad_(False)
        self.segmenter = DeSAMSegmenter(engine, DeSAM(engine.sam), mode, VALIDATION_GRID_SIDE)
        self.module = self.segmenter.model
        self.mode = mode
        self.loss_function = DiceCELoss(sigmoid=True, batch=True)

    def samples(self, cases: list[CachedCase]) -> list[SliceSample]:
        return [SliceSample(number, index) for number, case in enumerate(cases) for index in range(len(case.labels))]

    def loss(self, cases: list[CachedCase], batch: list[SliceSample], generator: random.Random) -> torch.Tensor:
        device = self.engine.device
        per_slice = [slice_features(cases[s.case], [s.slice], device) for s in batch]
        features = EncoderFeatures(
            torch.cat([f.embedding for f in per_slice]), [torch.cat(skips) for skips in zip(*(f.skips for f in per_slice))]
        )
        masks = [cases[s.case].labels[s.slice] > 0 for s in batch]
        if self.mode == "box":
            logits, _ = self.segmenter(features, None, [mask.shape for mask in masks])
            return self.loss_function(logits, self._targets(masks, logits.shape[-1]))
        repeated = [number for number in range(len(masks)) for _ in range(POINTS_PER_SLICE)]
        points = np.array([random_point(masks[n], masks[n].any() and generator.random() < 0.5, generator) for n in repeated])
        logits, iou = self.segmenter(features.slices(repeated), points, [masks[n].shape for n in repeated])
        target = self._targets(masks, logits.shape[-1])[repeated]
        consistency = torch.sigmoid(logits).unflatten(0, (len(masks), POINTS_PER_SLICE)).var(dim=1, unbiased=False).mean()
        iou_error = torch.nn.functional.mse_loss(iou, mask_iou(logits.detach(), target))
        return self.loss_function(logits, target) + IOU_LOSS_WEIGHT * iou_error + CONSISTENCY_WEIGHT * consistency

    def _targets(self, masks: list[np.ndarray], side: int) -> torch.Tensor:
        return torch.cat([low_resolution_target(self.engine, mask, side) for mask in masks])

    def optimiser(self, options: TrainingOptions, steps: int):
        return torch.optim.AdamW(self.trainable_parameters(), lr=options.learning_rate, weight_decay=1e-4), None

    def segment_case(self, case: CachedCase) -> np.ndarray:
        shape = case.labels.shape[1:]
        return np.stack(
            [self.segmenter.segment_slice(slice_features(case, [index], self.engine.device), shape) for index in range(len(case.labels))]
        ).astype(np.uint8)

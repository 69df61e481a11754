"""SAMMed: fine-tune only SAM's mask decoder on cached source-site embeddings.

The image encoder never runs (its embeddings come from the cache) and the prompt encoder stays
frozen. Prompts are the coarse network's filtered boxes, jittered during training only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from ...masks.boxes import Box, ProposalOptions, propose_boxes
from ...modeling.sam_engine import Prompt, SamEngine
from ...training.embedding_cache import CachedCase
from ...training.loop import FineTuningMethod

JITTER_FRACTION = 0.1


@dataclass(frozen=True)
class BoxSample:
    case: int
    slice: int
    box: Box


def jitter(box: Box, shape: tuple[int, int], generator: random.Random) -> Box:
    """Move each edge by up to 10 % of the box size, staying inside the slice."""
    width, height = box.x1 - box.x0, box.y1 - box.y0
    x0 = min(max(box.x0 + generator.uniform(-1, 1) * JITTER_FRACTION * width, 0), shape[1] - 2)
    y0 = min(max(box.y0 + generator.uniform(-1, 1) * JITTER_FRACTION * height, 0), shape[0] - 2)
    x1 = min(max(box.x1 + generator.uniform(-1, 1) * JITTER_FRACTION * width, x0 + 1), shape[1] - 1)
    y1 = min(max(box.y1 + generator.uniform(-1, 1) * JITTER_FRACTION * height, y0 + 1), shape[0] - 1)
    return Box(x0, y0, x1, y1)


def low_resolution_target(engine: SamEngine, mask: np.ndarray, side: int) -> torch.Tensor:
    """A reference mask [1, 1, side, side] resized and padded exactly like the encoder's input."""
    input_size = engine.input_size(mask.shape)
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(mask))[None, None].float(), input_size, mode="nearest")
    image_size = engine.sam.image_encoder.img_size
    padded = F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]))
    return F.interpolate(padded, (side, side), mode="nearest").to(engine.device)


class SamMedMethod(FineTuningMethod):
    """The mask decoder learns; each sample is one slice with its coarse-network box."""

    cached_features = ("embeddings", "coarse")

    def __init__(self, engine: SamEngine, proposal: ProposalOptions = ProposalOptions()):
        self.engine = engine
        self.proposal = proposal
        self.module = engine.sam.mask_decoder
        for parameter in engine.sam.parameters():
            parameter.requires_grad_(False)
        for parameter in self.module.parameters():
            parameter.requires_grad_(True)
        self.loss_function = DiceCELoss(sigmoid=True)

    def boxes(self, case: CachedCase) -> dict[int, Box]:
        return propose_boxes(case.coarse.astype(np.float32), case.spacing_xy, self.proposal)

    def samples(self, cases: list[CachedCase]) -> list[BoxSample]:
        return [BoxSample(number, index, box) for number, case in enumerate(cases) for index, box in self.boxes(case).items()]

    def loss(self, cases: list[CachedCase], batch: list[BoxSample], generator: random.Random) -> torch.Tensor:
        # segment-anything's decoder repeats the image per prompt, so slices are decoded one by one.
        losses = []
        for sample in batch:
            case = cases[sample.case]
            shape = case.labels.shape[1:]
            logits = self.logits(case.embeddings[sample.slice], jitter(sample.box, shape, generator), shape)
            losses.append(self.loss_function(logits, low_resolution_target(self.engine, case.labels[sample.slice] > 0, logits.shape[-1])))
        return torch.stack(losses).mean()

    def logits(self, embedding: torch.Tensor, box: Box, shape: tuple[int, int]) -> torch.Tensor:
        """Low-resolution mask logits [1, 1, 4·64, 4·64] for one box on one slice."""
        sam = self.engine.sam
        boxes = self.engine.transform.apply_boxes_torch(torch.tensor([box.as_tuple()], device=self.engine.device), shape)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, _ = self.module(
            image_embeddings=embedding[None].to(self.engine.device).float(),
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits

    def segment_case(self, case: CachedCase) -> np.ndarray:
        """SAM's mask in each coarse box; slices without a box stay empty."""
        labels = np.zeros(case.labels.shape, dtype=np.uint8)
        for index, box in self.boxes(case).items():
            embedding = case.embeddings[index].to(self.engine.device).float()
            labels[index] = self.engine.decode(embedding, Prompt(box=box.as_tuple()), case.labels.shape[1:])
        return labels

"""SAMed training: LoRA adapters, prompt encoder and mask decoder learn zonal labels.

The encoder's stem has no attention block, so it has no LoRA and its output is read from the
embedding cache (TinyViT's first skip feature); only the attention stages run, with gradients.
Slices with gland and their neighbours are sampled; 0.2 CE + 0.8 Dice over the three classes;
AdamW with a linear warmup and cosine decay.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from monai.losses import DiceCELoss

from ...modeling.sam_engine import SamEngine
from ...modeling.samed import SAMed, SAMedSegmenter
from ...training.embedding_cache import CachedCase
from ...training.loop import FineTuningMethod, SliceSample, TrainingOptions
from .sammed import low_resolution_target

NEIGHBOUR_SLICES = 1  # gland-free slices next to the gland are trained on too
WARMUP_FRACTION = 0.1


def training_slices(labels: np.ndarray) -> list[int]:
    """Slices with gland, widened by NEIGHBOUR_SLICES on each side."""
    gland = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    wanted = {index + offset for index in gland for offset in range(-NEIGHBOUR_SLICES, NEIGHBOUR_SLICES + 1)}
    return sorted(int(index) for index in wanted if 0 <= index < len(labels))


class SAMedMethod(FineTuningMethod):
    cached_features = ("stem",)
    encoder_grid = "canvas"

    def __init__(self, engine: SamEngine):
        self.engine = engine
        self.module: SAMed = SAMed(engine.sam).to(engine.device)
        self.segmenter = SAMedSegmenter(engine, self.module)
        self.loss_function = DiceCELoss(softmax=True, to_onehot_y=True, lambda_ce=0.2, lambda_dice=0.8, batch=True)

    def stems(self, case: CachedCase, indices: list[int]) -> torch.Tensor:
        return self.module.stages.stem_from_skips([case.skips[0][indices].to(self.engine.device).float()])

    def samples(self, cases: list[CachedCase]) -> list[SliceSample]:
        return [SliceSample(number, index) for number, case in enumerate(cases) for index in training_slices(case.labels)]

    def loss(self, cases: list[CachedCase], batch: list[SliceSample], generator: random.Random) -> torch.Tensor:
        stems = torch.cat([self.stems(cases[s.case], [s.slice]) for s in batch])
        logits = self.module.zone_logits(self.module.stages.trunk(stems).embedding)
        target = torch.cat([low_resolution_target(self.engine, cases[s.case].labels[s.slice], logits.shape[-1]) for s in batch])
        return self.loss_function(logits, target)

    def optimiser(self, options: TrainingOptions, steps: int):
        optimiser = torch.optim.AdamW(self.trainable_parameters(), lr=options.learning_rate, weight_decay=0.1)
        warmup = max(1, round(WARMUP_FRACTION * steps))

        def factor(step: int) -> float:  # linear warmup, then cosine decay to zero
            return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / max(steps, 1), 1.0)))

        return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor)

    def segment_case(self, case: CachedCase) -> np.ndarray:
        shape = case.labels.shape[1:]
        return np.concatenate(
            [self.segmenter.labels_from_stems(self.stems(case, [index]), shape) for index in range(len(case.labels))]
        )

"""Default training settings (importable without torch: the Slicer module reads them at startup)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingDefaults:
    epochs: int
    learning_rate: float
    batch_size: int


COARSE_TRAINING = TrainingDefaults(24, 1e-3, 16)
COARSE_INPUT = ("log-contrast", 4.0)  # the shipped network's input representation and z context (mm)
VALIDATION_FRACTION = 0.1  # of the source site's cases, held out to choose the best epoch

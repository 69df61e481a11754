"""Default training settings (importable without torch: the Slicer module reads them at startup)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingDefaults:
    epochs: int
    learning_rate: float
    batch_size: int


COARSE_TRAINING = TrainingDefaults(24, 1e-3, 16)
COARSE_INPUT_REPRESENTATION = "log-contrast"  # the shipped coarse network's input ...
COARSE_CONTEXT_MM = 4.0  # ... and z context
VALIDATION_FRACTION = 0.1  # of the source site's cases, held out to choose the best epoch
RESUME_STATE = "last_state.pt"  # in a training output folder: the state after the last completed epoch (--resume)

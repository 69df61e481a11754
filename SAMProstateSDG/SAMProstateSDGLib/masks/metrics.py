"""Dice and HD95 (MONAI's metrics) of predicted masks against reference masks."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance


@dataclass(frozen=True)
class Score:
    dice: float
    hd95_mm: float  # nan when the prediction or the reference is empty


def _batch(mask: np.ndarray) -> torch.Tensor:
    """A mask (label > 0) as MONAI's [batch, channel, ...] float tensor."""
    return torch.from_numpy(mask > 0)[None, None].float()


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two masks (label > 0); 1.0 when both are empty."""
    return compute_dice(_batch(prediction), _batch(reference), include_background=True, ignore_empty=False).item()


def score(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> Score:
    dice = dice_score(prediction, reference)
    if not prediction.any() or not reference.any():
        return Score(dice, math.nan)
    with warnings.catch_warnings():  # MONAI warns about an argument it passes to itself
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(_batch(prediction), _batch(reference), include_background=True, percentile=95, spacing=spacing_zyx)
    return Score(dice, hd95.item())

"""How far to trust a gland volume: agreement of measured volumes with the reference masks' volumes.

Mean absolute percentage error and Bland–Altman bias with 95 % limits of agreement (bias ± 1.96 SD
of the differences), in mL and in % of the reference volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    cases: int
    mean_absolute_percent_error: float
    bias_ml: float
    limits_ml: tuple[float, float]
    bias_percent: float
    limits_percent: tuple[float, float]


def agreement(measured_ml: list[float], reference_ml: list[float]) -> Agreement:
    """Agreement of paired volumes (at least two pairs, every reference volume positive)."""
    measured, reference = np.asarray(measured_ml, dtype=float), np.asarray(reference_ml, dtype=float)
    if len(measured) != len(reference) or len(measured) < 2 or (reference <= 0).any():
        raise ValueError("agreement needs at least two pairs of volumes with positive reference volumes")
    difference = measured - reference
    percent = 100 * difference / reference
    return Agreement(
        len(measured), float(np.abs(percent).mean()), float(difference.mean()), _limits(difference), float(percent.mean()), _limits(percent)
    )


def _limits(values: np.ndarray) -> tuple[float, float]:
    spread = 1.96 * values.std(ddof=1)
    return float(values.mean() - spread), float(values.mean() + spread)


def markdown_table(rows: dict[str, Agreement]) -> str:
    lines = [
        "| Volume vs reference volume | Cases | Mean abs. error (%) | Bias (mL) | 95 % limits (mL) | Bias (%) | 95 % limits (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, row in rows.items():
        lines.append(
            f"| {title} | {row.cases} | {row.mean_absolute_percent_error:.1f} | {row.bias_ml:+.1f} | "
            f"{row.limits_ml[0]:+.1f} to {row.limits_ml[1]:+.1f} | {row.bias_percent:+.1f} | "
            f"{row.limits_percent[0]:+.1f} to {row.limits_percent[1]:+.1f} |"
        )
    return "\n".join(lines)

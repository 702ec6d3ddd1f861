"""How a number is written where people read it (summary.json, metrics.jsonl, the cards): every float to
``SIGNIFICANT_DIGITS`` significant digits, and -0.0 as 0.0.

Seven digits are float32's own precision: a float32 metric reads as it was meant (0.05, not the
0.05000000074505806 its conversion to a Python float shows), a float64 one (an AUC) keeps more digits than
it means, and a wall time keeps milliseconds up to 10,000 s. What a run resumes from (its checkpoints) is
never rounded."""
from __future__ import annotations

import math

SIGNIFICANT_DIGITS = 7


def tidy_float(value: float) -> float:
    if not math.isfinite(value):
        return value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}") + 0.0  # adding 0.0 turns -0.0 into 0.0


def tidy(value):
    """``value`` with every float in it (in dicts, lists and tuples too) rounded by ``tidy_float``."""
    if isinstance(value, float):
        return tidy_float(value)
    if isinstance(value, dict):
        return {key: tidy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tidy(item) for item in value)
    return value

"""Seeded bootstrap intervals over items (docs/methods.md, "Task evaluation": uncertainty)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (items resampled with replacement,
    ``numpy.random.default_rng(seed)``); ``(nan, nan)`` without values. For a paired
    comparison pass the per-item differences."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)

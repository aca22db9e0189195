"""Seeded bootstrap intervals (docs/methods.md, "Findings": intervals).

:func:`bootstrap_interval` resamples items for the interval of a mean;
:func:`resample_counts` gives the multiplicity of every item in each resample, for
statistics that are not a mean (perplexity over resampled documents, a share of
languages); :func:`percentile_interval` turns resampled statistics into the interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95


def resample_counts(
    n_items: int, n_resamples: int = N_RESAMPLES, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``[n_resamples, n_items]``: how often each item is drawn in each resample (items
    drawn with replacement, ``n_items`` per resample, ``rng`` default seed 0)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    picks = rng.integers(0, n_items, size=(n_resamples, n_items))
    counts = np.zeros((n_resamples, n_items))
    np.add.at(counts, (np.arange(n_resamples)[:, None], picks), 1)
    return counts


def percentile_interval(samples: Sequence[float] | np.ndarray, level: float = LEVEL):
    """The central ``level`` percentile interval of resampled statistics (NaNs dropped);
    ``(nan, nan)`` without any."""
    x = np.asarray(samples, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


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
    return percentile_interval(means, level)

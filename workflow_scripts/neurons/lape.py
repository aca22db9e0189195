"""LAPE: language activation probability entropy (Tang et al. 2024).

Given, per language L and MLP neuron j, the activation probability
``P(L, j)`` (share of L's teacher-forced tokens where the activation is
``> 0``; exactly ``count / n_positions`` of an activation count taken with
``positions: all``):

1. normalise over languages: ``p'(L, j) = P(L, j) / sum_L P(L, j)``;
2. entropy ``H(j) = -sum_L p'(L, j) log p'(L, j)``;
3. only neurons whose largest ``P(L, j)`` reaches the ``percentile``-th
   percentile of all P values take part;
4. keep the ``top_share`` of all neurons with the lowest entropy;
5. assign each kept neuron to every language whose ``P(L, j)`` reaches that
   same percentile threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LapeSelection:
    """Result of :func:`lape_select` for ``probs[L, layers, neurons]``."""

    entropy: np.ndarray  # [layers, neurons], inf where filtered out
    selected: np.ndarray  # [layers, neurons] bool: the lowest-entropy top_share
    assigned: np.ndarray  # [L, layers, neurons] bool: neuron is specific to language L
    threshold: float  # the percentile value of all P


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy over the language axis (axis 0) of the normalised probabilities (0 log 0 = 0)."""
    total = probs.sum(0, keepdims=True)
    norm = np.divide(probs, total, out=np.zeros_like(probs, dtype=float), where=total > 0)
    logs = np.log(norm, out=np.zeros_like(norm), where=norm > 0)
    return -(norm * logs).sum(0)


def lape_select(
    probs: np.ndarray, top_share: float = 0.01, percentile: float = 95.0
) -> LapeSelection:
    """Select language-specific neurons from ``probs[L, layers, neurons]``.

    The percentile is taken over all ``L * layers * neurons`` values with
    numpy's default (linear) interpolation; ties at the threshold count as
    reaching it. The number kept is ``round(top_share * layers * neurons)``
    (at least 1).
    """
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(
            f"LAPE needs probabilities [languages>=2, layers, neurons], got {probs.shape}"
        )
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share must be in (0, 1], got {top_share}")
    threshold = float(np.percentile(probs, percentile))
    ent = entropy(probs)
    ent[probs.max(0) < threshold] = np.inf
    k = max(1, round(top_share * ent.size))
    order = np.argsort(ent, axis=None, kind="stable")[:k]
    selected = np.zeros(ent.size, dtype=bool)
    selected[order] = True
    selected &= np.isfinite(ent.ravel())
    selected = selected.reshape(ent.shape)
    assigned = (probs >= threshold) & selected[None]
    return LapeSelection(ent, selected, assigned, threshold)

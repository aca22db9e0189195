"""Figures of activation counting: heatmap, inhibition, peaks (Mu et al. 2024)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from workflow_scripts.figures.style import PARALLEL, condition_label, save
from workflow_scripts.io import read_parquet
from workflow_scripts.neurons.actcount import peak_neurons
from workflow_scripts.neurons.selection import count_matrix


def _condition_style(condition: str, i: int) -> dict:
    if condition == PARALLEL:
        return {"color": "black", "lw": 2.6, "ls": "-", "zorder": 5}
    return {"color": plt.cm.tab10(i % 10), "lw": 1.3, "ls": ("-", "--", ":")[i // 10 % 3]}


def frequencies(
    counts: Mapping[str, np.ndarray], n_positions: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Activation frequency per condition: count / recorded positions of each neuron, so
    conditions of different length (80 parallel prompts' positions vs 1,500 of one
    language) and experts that saw different tokens compare."""
    return {cond: c / np.maximum(n_positions[cond], 1) for cond, c in counts.items()}


def _positions_label(n_positions: np.ndarray) -> str:
    """The recorded positions of a condition (per layer: routed tokens differ by expert)."""
    return f"{int(np.asarray(n_positions).max(initial=0)):,} recorded positions"


def heatmap(
    counts: Mapping[str, np.ndarray],
    n_positions: Mapping[str, np.ndarray],
    model: str,
    out: str | Path,
) -> None:
    """One panel per condition: layers (y, origin bottom) x neuron index (x), colour =
    activation frequency (count / recorded positions) on one colour scale, 0 to 1, shared
    by every panel (the counts themselves stay in the activation tables)."""
    freq = frequencies(counts, n_positions)
    moe = any(np.ptp(np.asarray(n)) > 0 for n in n_positions.values())
    n = len(freq)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.4 * cols + 1.0, 3.4 * rows), squeeze=False, layout="constrained"
    )
    im = None
    for ax, (cond, f) in zip(axes.flat, freq.items(), strict=False):
        im = ax.imshow(
            f,
            aspect="auto",
            origin="lower",
            cmap="hot",
            interpolation="nearest",
            vmin=0.0,
            vmax=1.0,
        )
        ax.set_title(f"{condition_label(cond)}\n{_positions_label(n_positions[cond])}", fontsize=10)
        ax.set_xlabel("MLP neuron index (experts side by side)" if moe else "MLP neuron index")
        ax.set_ylabel("layer")
        ax.set_yticks(range(0, f.shape[0], 5))
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(
            im,
            ax=axes,
            label="activation frequency (share of recorded positions with act > 0)",
            shrink=0.9,
        )
    fig.suptitle(
        f"{model}: how often each MLP neuron fires, per input condition ({n} conditions)",
        fontsize=13,
    )
    save(fig, out)


def inhibition(shares: Mapping[str, np.ndarray], model: str, out: str | Path) -> None:
    """Mean share of inhibited neurons (act <= 0) per layer, one line per condition."""
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for i, (cond, s) in enumerate(shares.items()):
        label = f"{condition_label(cond)}: mean {100 * s.mean():.1f}%"
        ax.plot(
            np.arange(len(s)), 100 * s, marker="o", ms=3, label=label, **_condition_style(cond, i)
        )
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("inhibited neurons (act <= 0), % of MLP neurons")
    ax.set_title(
        f"{model}: share of inhibited MLP neurons per layer\n(mean over recorded positions)"
    )
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        title="condition: mean over layers",
    )
    fig.tight_layout()
    save(fig, out)


def peaks(
    counts: Mapping[str, np.ndarray],
    n_positions: Mapping[str, np.ndarray],
    select_proportion: float,
    model: str,
    out: str | Path,
) -> None:
    """Top ``select_proportion`` neurons by frequency: activation frequency vs rank, and kept
    neurons per layer (the same ranking as by count when every neuron saw the same
    positions, as in a dense model)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    for i, (cond, f) in enumerate(frequencies(counts, n_positions).items()):
        style = _condition_style(cond, i)
        flat = np.sort(f.ravel())[::-1]
        k = int(np.ceil(select_proportion * flat.size))
        left.plot(np.arange(1, k + 1), flat[:k], label=condition_label(cond), **style)
        per_layer = peak_neurons(f, select_proportion).sum(1)
        right.plot(np.arange(len(per_layer)), per_layer, marker="o", ms=3, **style)
    left.set_xlabel("rank (neurons sorted by activation frequency)")
    left.set_ylabel("activation frequency (share of recorded positions with act > 0)")
    left.set_ylim(0, 1.02)
    left.set_title(f"top {100 * select_proportion:g}% neurons: frequency by rank")
    left.set_xscale("log")
    right.set_xlabel("layer")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylabel("high-frequency neurons kept (count)")
    right.set_title(f"top {100 * select_proportion:g}% neurons per layer")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, ncol=2)
    fig.suptitle(f"{model}: high-frequency ('peak') MLP neurons per condition", fontsize=13)
    fig.tight_layout()
    save(fig, out)


def load_counts(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``[layers, neurons]`` matrices of counts and of recorded positions, one condition."""
    return count_matrix(read_parquet(path, ["layer", "index", "count", "n_positions"]))


def plot_activation_figures(
    count_files: Mapping[str, str],
    inhibition_files: Mapping[str, str],
    model: str,
    select_proportion: float,
    heatmap_out: str,
    inhibition_out: str,
    peaks_out: str,
) -> None:
    """The three activation-counting figures of one model from the per-condition tables."""
    loaded = {cond: load_counts(path) for cond, path in count_files.items()}
    counts = {cond: m for cond, (m, _) in loaded.items()}
    shares = {
        cond: read_parquet(path, ["inhibited_share"])["inhibited_share"].to_numpy()
        for cond, path in inhibition_files.items()
    }
    n_positions = {cond: n for cond, (_, n) in loaded.items()}
    heatmap(counts, n_positions, model, heatmap_out)
    inhibition(shares, model, inhibition_out)
    peaks(counts, n_positions, select_proportion, model, peaks_out)

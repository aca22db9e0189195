"""The steering figure (docs/methods.md, "Output-language steering"): success against
strength for the neuron methods and for DiffMean, success against relevance for every
setting, and the source x target success of each method's best setting."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from workflow_scripts.evaluation.steering import best_settings
from workflow_scripts.figures.style import save

COLORS = {"plnd": "C0", "lape": "C1", "actcount": "C2", "diffmean": "C3"}
SHORT = {"deactivate": "off", "activate": "act", "both": "both", "steer": "steer"}


def _curves(ax, summary: pd.DataFrame, methods, setting: str, xlabel: str, title: str) -> None:
    for method in methods:
        rows = summary[(summary["method"] == method) & (summary["setting"] == setting)]
        for control, style in (("selected", "-"), ("random", ":")):
            r = rows[rows["control"] == control].groupby("strength")["success"].mean()
            if not r.empty:
                label = method + (" random" if control == "random" else "")
                ax.plot(
                    r.index, r.to_numpy(), style, marker="o", color=COLORS.get(method), label=label
                )
    none = summary[summary["setting"] == "none"]["success"].mean()
    ax.axhline(none, color="grey", lw=1, label="no intervention")
    ax.set(xlabel=xlabel, ylabel="continuations in the target language (share)", title=title)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="best")


def plot_steering(summary: pd.DataFrame, model: str, out: str | Path) -> None:
    """Top: success (mean over pairs) vs strength of the neuron methods' ``both`` setting
    and of DiffMean's ``steer`` (dotted: random controls), and success vs relevance
    (chrF) of every setting; bottom: per method the source x target success of its best
    setting (highest combined score; the setting in each cell), one colour scale 0-1."""
    methods = list(dict.fromkeys(summary["method"]))
    neuron_methods = [m for m in methods if m != "diffmean"]
    langs = sorted(set(summary["source"]) | set(summary["target"]))
    pairs = sorted(set(zip(summary["source"], summary["target"], strict=True)))
    n = max(len(methods), 3)
    fig = plt.figure(figsize=(3.4 * n, 8.4), layout="constrained")
    grid = fig.add_gridspec(2, n, height_ratios=[1, 1.05])
    shown = ", ".join(f"{s}->{t}" for s, t in pairs[:6]) + (" ..." if len(pairs) > 6 else "")
    fig.suptitle(f"Output-language steering, {model}: {len(pairs)} pairs ({shown})")
    top = grid[0, :].subgridspec(1, 3)
    if neuron_methods:
        _curves(
            fig.add_subplot(top[0]),
            summary,
            neuron_methods,
            "both",
            "strength (x the target language's statistic)",
            "Neurons: deactivate source + activate target",
        )
    if "diffmean" in methods:
        _curves(
            fig.add_subplot(top[1]),
            summary,
            ["diffmean"],
            "steer",
            "strength (x mu(target) - mu(source))",
            "DiffMean steering",
        )
    ax = fig.add_subplot(top[2])
    for method in methods:
        for control, marker in (("selected", "o"), ("random", "x")):
            r = summary[(summary["method"] == method) & (summary["control"] == control)]
            ax.scatter(
                r["relevance"],
                r["success"],
                marker=marker,
                s=18,
                color=COLORS.get(method),
                alpha=0.7,
                label=f"{method}{' random' if control == 'random' else ''}",
            )
    none = summary[summary["setting"] == "none"]
    ax.scatter(
        none["relevance"], none["success"], marker="s", s=24, color="grey", label="no intervention"
    )
    ax.set(
        xlabel="relevance: chrF vs the aligned target continuation",
        ylabel="target-language share",
        title="Every setting and pair: success vs content",
    )
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=6, loc="best", ncol=2)
    best = best_settings(summary)
    image = None
    for col, method in enumerate(methods):
        ax = fig.add_subplot(grid[1, col])
        m = np.full((len(langs), len(langs)), np.nan)
        b = best[best["method"] == method]
        for row in b.itertuples():
            i, j = langs.index(row.source), langs.index(row.target)
            m[i, j] = row.success
            ax.text(
                j,
                i,
                f"{row.success:.2f}\n{SHORT.get(row.setting, row.setting)} x{row.strength:g}",
                ha="center",
                va="center",
                fontsize=6.5,
                color="w" if row.success < 0.6 else "k",
            )
        ax.set_facecolor("#e6e6e6")
        image = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set(
            xticks=range(len(langs)),
            xticklabels=langs,
            yticks=range(len(langs)),
            yticklabels=langs,
            xlabel="target",
            ylabel="source",
        )
        ax.set_title(f"{method}: success of the best setting", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=fig.axes[-len(methods) :], shrink=0.8, label="target-language share")
    save(fig, out)

"""Which experts each language is routed to: routing frequency per layer, languages x
experts, with the language-specific experts of the entropy selection marked."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workflow_scripts.figures.style import save
from workflow_scripts.io import read_parquet
from workflow_scripts.neurons.routing import routing_frequency


def routing_grid(stats: Mapping[str, pa.Table]) -> tuple[list[int], np.ndarray]:
    """``(layers, frequency[layers, languages, experts])`` from per-language routing tables."""
    first = next(iter(stats.values()))
    layers = sorted(set(first["layer"].to_pylist()))
    n_experts = int(max(first["expert"].to_pylist())) + 1
    grid = np.zeros((len(layers), len(stats), n_experts))
    row = {layer: i for i, layer in enumerate(layers)}
    for j, table in enumerate(stats.values()):
        freq = routing_frequency(table)
        for layer, expert, f in zip(
            table["layer"].to_pylist(), table["expert"].to_pylist(), freq, strict=True
        ):
            grid[row[layer], j, expert] = f
    return layers, grid


def plot_experts(
    stats: Mapping[str, pa.Table],
    selections: Mapping[str, pa.Table],
    model: str,
    out: str | Path,
    top_k: int | None = None,
) -> None:
    """One panel per mixture-of-experts layer: languages (rows) x experts (columns),
    colour = share of the language's tokens routed to the expert, one colour scale for
    every panel; a white dot marks an expert selected as specific to that language."""
    langs = list(stats)
    layers, grid = routing_grid(stats)
    n_experts = grid.shape[-1]
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(0.45 * n_experts * cols + 2.5, 0.32 * len(langs) * rows + 1.8),
        squeeze=False,
        layout="constrained",
    )
    vmax = float(grid.max()) or 1.0
    im = None
    for i, (ax, layer) in enumerate(zip(axes.flat, layers, strict=False)):
        im = ax.imshow(grid[i], aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        for j, lang in enumerate(langs):
            sel = selections.get(lang)
            if sel is None:
                continue
            chosen = sel.filter(pc.and_(sel["selected"], pc.equal(sel["layer"], layer)))
            for e in chosen["index"].to_pylist():
                ax.plot(e, j, "o", ms=5, mfc="white", mec="black", mew=0.8)
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.set_xticks(range(n_experts))
        ax.set_xticklabels(range(n_experts), fontsize=7)
        ax.set_yticks(range(len(langs)))
        ax.set_yticklabels(langs, fontsize=8)
        ax.set_xlabel("expert")
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, label="routing frequency (share of tokens)", shrink=0.9)
    k = f"top-{top_k} of {n_experts} experts" if top_k else f"{n_experts} experts"
    fig.suptitle(
        f"{model}: experts each language is routed to ({k}; "
        f"{len(langs)} languages: {', '.join(langs)})\n"
        "white dots: language-specific experts (entropy selection)",
        fontsize=11,
    )
    save(fig, out)


def plot_expert_figure(
    stats_files: Mapping[str, str], selection_files: Mapping[str, str], model: str, out: str
) -> None:
    """:func:`plot_experts` from the per-language routing and selection tables."""
    stats = {lang: read_parquet(p) for lang, p in stats_files.items()}
    selections = {lang: read_parquet(p) for lang, p in selection_files.items()}
    first = next(iter(stats.values()))
    layer0 = first.filter(pc.equal(first["layer"], first["layer"][0]))
    n_tokens = max(int(layer0["n_tokens"][0].as_py()), 1)
    top_k = round(pc.sum(layer0["count"]).as_py() / n_tokens)  # each token picks k experts
    plot_experts(stats, selections, model, out, top_k=top_k)

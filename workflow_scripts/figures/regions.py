"""The regions figure (Zhang et al.): where the regions sit, and what perturbing them does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from workflow_scripts.figures.style import save
from workflow_scripts.io import read_metadata, read_parquet
from workflow_scripts.regions.scores import IMPORTANT_END

ENDS = ("top", "bottom", "random")


def module_type(module: str) -> str:
    """``self_attn.q_proj.weight`` -> ``q_proj``; norms keep their name (``input_layernorm``)."""
    parts = module.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def monolingual_shares(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Share of elements in each language's monolingual region: by layer, and by module type."""
    mono = summary[summary["region"].str.startswith("monolingual_")].copy()
    mono["lang"] = mono["region"].str.removeprefix("monolingual_")
    mono["type"] = mono["module"].map(module_type)
    by_layer = mono.groupby(["layer", "lang"])[["n_selected", "numel"]].sum()
    by_type = mono.groupby(["type", "lang"])[["n_selected", "numel"]].sum()
    return (
        (by_layer["n_selected"] / by_layer["numel"]).unstack("lang"),
        (by_type["n_selected"] / by_type["numel"]).unstack("lang"),
    )


def _perturbation(ax, table: pd.DataFrame, core: str, title: str) -> None:
    base = table[table["setting"] == "base"].set_index("eval_lang")["ppl"]
    langs = list(base.index)
    width = 0.8 / (len(ENDS) + 1)
    x = np.arange(len(langs))
    ax.bar(x - 1.5 * width, base.to_numpy(), width, label="base", color="0.6")
    colours = {"top": "tab:red", "bottom": "tab:blue", "random": "tab:green"}
    for i, end in enumerate(ENDS):
        rows = table[table["setting"] == end].groupby("eval_lang")["ppl"].mean()
        if rows.empty:
            continue
        label = f"{end} (core)" if end == core else end
        ax.bar(
            x + (i - 0.5) * width,
            rows.reindex(langs).to_numpy(),
            width,
            label=label,
            color=colours[end],
            hatch="//" if end == core else None,
            edgecolor="black" if end == core else None,
        )
    ax.set_yscale("log")
    ax.set_xticks(x, langs)
    ax.set_xlabel("evaluated language")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, ncols=4)


def _monolingual_matrix(ax, table: pd.DataFrame) -> None:
    mono = table[table["setting"] == "monolingual"].copy()
    if mono.empty:
        ax.set_axis_off()
        return
    mono["change"] = np.log2(mono["ppl"] / mono["base_ppl"])
    mat = mono.pivot_table(index="target_lang", columns="eval_lang", values="change")
    lim = max(0.05, float(np.nanmax(np.abs(mat.to_numpy()))))
    image = ax.imshow(mat.to_numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i, target in enumerate(mat.index):
        for j, lang in enumerate(mat.columns):
            pct = 100 * (2 ** mat.iloc[i, j] - 1)
            weight = "bold" if target == lang else "normal"
            ax.text(j, i, f"{pct:+.0f}%", ha="center", va="center", fontsize=7, fontweight=weight)
    ax.set_xticks(range(len(mat.columns)), mat.columns)
    ax.set_yticks(range(len(mat.index)), mat.index)
    ax.set_xlabel("evaluated language")
    ax.set_ylabel("perturbed monolingual region of")
    ax.set_title("monolingual regions: PPL change (bold: own language)", fontsize=11)
    plt.colorbar(image, ax=ax, label="log2(PPL / base PPL)")


def plot_regions(
    summary_csv: str | Path,
    perturbation: str | Path | None,
    model: str,
    out: str | Path,
    kinds: Sequence[str] | None = None,
) -> None:
    """Four panels: monolingual-region share by layer and by module type; Top/Bottom/Random
    perturbation perplexity per language; the monolingual-region PPL-change matrix."""
    summary = pd.read_csv(summary_csv)
    by_layer, by_type = monolingual_shares(summary)
    fig, axes = plt.subplots(2, 2, figsize=(15, 10), constrained_layout=True)
    ax = axes[0, 0]
    for i, lang in enumerate(by_layer.columns):
        ax.plot(by_layer.index, 100 * by_layer[lang], marker="o", ms=3, label=lang, color=f"C{i}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the layer's parameters (%)")
    ax.set_title("monolingual regions by layer", fontsize=11)
    ax.legend(fontsize=8, ncols=2, title="language")
    ax = axes[0, 1]
    image = ax.imshow(100 * by_type.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(by_type.columns)), by_type.columns)
    ax.set_yticks(range(len(by_type.index)), by_type.index)
    ax.set_xlabel("language")
    ax.set_title("monolingual regions by parameter type (% of its elements)", fontsize=11)
    plt.colorbar(image, ax=ax, label="% of elements")
    meta = read_metadata(perturbation) if perturbation else {}
    score, k = meta.get("score", "?"), meta.get("k", "?")
    core = IMPORTANT_END.get(score, "")
    if perturbation:
        table = read_parquet(perturbation).to_pandas()
        how = meta.get("perturb", "zero")
        kinds = kinds or meta.get("perturb_kinds", [])
        _perturbation(
            axes[1, 0],
            table,
            core,
            f"perturbation ({how}; {'+'.join(kinds)}) of the top / bottom / random {k} "
            "of every tensor",
        )
        _monolingual_matrix(axes[1, 1], table)
    else:
        axes[1, 0].set_axis_off()
        axes[1, 1].set_axis_off()
    langs = ", ".join(by_layer.columns)
    fig.suptitle(
        f"{model}: linguistic regions (score {score}, core = {core or '?'} end, k = {k}; "
        f"region languages {langs})",
        fontsize=13,
    )
    save(fig, out)

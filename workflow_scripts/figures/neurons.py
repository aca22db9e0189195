"""Figures and tables of language-specific neuron selections (plnd, lape, actcount).

- ``layers_{model}``: selected neurons per layer, one panel per method, one line per
  language, with the layer stages of Zhao et al. 2024 shaded;
- ``overlap_{model}``: Jaccard overlap of the selected sets across languages (per
  method) and across methods (per language, MLP neurons only);
- ``logit_lens_{model}``: language of the logit-lens top-k tokens per layer.

Inputs are the per-(model, method, lang) selection tables (``layer, module, index,
score, selected``) and the per-(model, lang) logit-lens tables (``layer,
lang_of_token, ratio, n_tokens``); see docs/dataflow.md, "The path contract".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from workflow_scripts.figures.style import condition_label, save
from workflow_scripts.io import read_parquet
from workflow_scripts.neurons.summary import (
    check_stages,
    default_stages,
    jaccard_tables,
    ordered_modules,
    selection_counts,
    write_tables,
)

ENGLISH = "en"
OTHER = "other"
LOGIT_LENS_COLUMNS = ["layer", "lang_of_token", "ratio"]
STAGE_COLOURS = {"understanding": "tab:blue", "generation": "tab:orange"}
# logit lens: one colour per role, the same in every panel
ROLE_STYLE = {
    "en": {"color": "black", "ls": "--", "lw": 2.0, "label": "English (en)"},
    "input": {"color": "tab:red", "ls": "-", "lw": 2.0, "label": "input language"},
    OTHER: {"color": "tab:gray", "ls": ":", "lw": 1.6, "label": "other"},
}


# ---------------------------------------------------------------- stages


def _layer_range(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def _stage_spans(n_layers: int, stages: tuple[int, int]) -> list[tuple[str, str, int, int]]:
    """``(name, label, first, last)`` of each non-empty stage (layers inclusive)."""
    n1, n2 = check_stages(stages, n_layers)
    spans = []
    if n1:
        spans.append(("understanding", f"understanding: {_layer_range(0, n1 - 1)}", 0, n1 - 1))
    if n_layers - n1 - n2 > 0:
        first, last = n1, n_layers - n2 - 1
        spans.append(("task-solving", f"task-solving: {_layer_range(first, last)}", first, last))
    if n2:
        first = n_layers - n2
        spans.append(
            (
                "generation",
                f"generation: last {n2} ({_layer_range(first, n_layers - 1)})",
                first,
                n_layers - 1,
            )
        )
    return spans


def _shade_stages(ax, spans, label_top: bool = True) -> None:
    """Shade understanding/generation spans; name each stage on a top axis."""
    for name, _, first, last in spans:
        if name in STAGE_COLOURS:
            ax.axvspan(
                first - 0.5, last + 0.5, color=STAGE_COLOURS[name], alpha=0.12, lw=0, zorder=0
            )
    if label_top and spans:
        top = ax.secondary_xaxis("top")
        top.set_xticks([(first + last) / 2 for _, _, first, last in spans])
        top.set_xticklabels([name for name, *_ in spans], fontsize=8, color="0.3")
        top.tick_params(length=0, pad=2)


def _stage_handles(spans) -> list[Patch]:
    return [
        Patch(
            facecolor=STAGE_COLOURS.get(name, "white"),
            alpha=0.25 if name in STAGE_COLOURS else 1,
            edgecolor="0.6",
            label=label,
        )
        for name, label, *_ in spans
    ]


# ---------------------------------------------------------------- figures


def _language_styles(langs: list[str]) -> dict[str, dict]:
    """English black dashed; other languages tab10 colours, line style cycling after 10."""
    styles = {}
    others = [lang for lang in langs if lang != ENGLISH]
    for i, lang in enumerate(others):
        styles[lang] = {
            "color": plt.cm.tab10(i % 10),
            "lw": 1.5,
            "ls": ("-", "-.", ":")[i // 10 % 3],
        }
    if ENGLISH in langs:
        styles[ENGLISH] = {"color": "black", "lw": 2.4, "ls": "--", "zorder": 5}
    return styles


def _grid(n: int, max_cols: int, w: float, h: float, **kwargs):
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False, **kwargs)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[: max(n, 1)]


def plot_layers(
    counts_table: pa.Table,
    model: str,
    n_layers: int,
    stages: tuple[int, int],
    out: str | Path,
) -> None:
    """Language-specific neurons per layer: one panel per method, one line per language.

    Counts are summed over the modules a method scores (panel titles name them).
    English is drawn black dashed. The understanding (first ``stages[0]`` layers)
    and generation (last ``stages[1]``) stages are shaded, following Zhao et al.
    """
    spans = _stage_spans(n_layers, stages)
    method_col = counts_table["method"].to_pylist()
    lang_col = counts_table["lang"].to_pylist()
    layer_col = np.asarray(counts_table["layer"].to_pylist(), dtype=np.int64)
    n_col = np.asarray(counts_table["n_selected"].to_pylist(), dtype=np.int64)
    module_col = counts_table["module"].to_pylist()
    if layer_col.size and (layer_col.min() < 0 or layer_col.max() >= n_layers):
        raise ValueError(f"counts table has layers outside 0..{n_layers - 1}")
    methods = list(dict.fromkeys(method_col))
    langs = list(dict.fromkeys(lang_col))
    styles = _language_styles(langs)
    fig, axes = _grid(len(methods), 3, 5.4, 4.3)
    x = np.arange(n_layers)
    for ax, method in zip(axes, methods, strict=False):
        in_method = np.array([m == method for m in method_col])
        modules = ordered_modules({mod for mod, k in zip(module_col, in_method, strict=True) if k})
        totals = {}
        for lang in langs:
            mask = in_method & np.array([la == lang for la in lang_col])
            if not mask.any():
                continue
            per_layer = np.bincount(layer_col[mask], weights=n_col[mask], minlength=n_layers)
            totals[lang] = int(per_layer.sum())
            ax.plot(x, per_layer, marker="o", ms=2.5, **styles[lang])
        _shade_stages(ax, spans)
        total = sum(totals.values())
        lines = [f"{method} ({'+'.join(modules)}): {total:,} selected in {len(totals)} languages"]
        if totals:
            low = min(totals, key=totals.get)
            high = max(totals, key=totals.get)
            lines.append(f"fewest: {low} ({totals[low]:,}), most: {high} ({totals[high]:,})")
        ax.set_title("\n".join(lines), fontsize=9.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("language-specific neurons (count)")
        ax.set_xlim(-0.5, n_layers - 0.5)
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if not methods:
        axes[0].text(
            0.5, 0.5, "no selection tables", ha="center", va="center", transform=axes[0].transAxes
        )
    handles = [
        plt.Line2D([], [], marker="o", ms=3, label=condition_label(lang), **styles[lang])
        for lang in langs
    ]
    handles += _stage_handles(spans)
    fig.suptitle(
        f"{model}: language-specific neurons per layer\n"
        "(per method and language; counts summed over the modules each method scores)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8.5,
        title="language / layer stage",
        title_fontsize=9,
        frameon=False,
    )
    save(fig, out)


def _heatmap(ax, matrix: np.ndarray, xlabels: list[str], ylabels: list[str], cmap, fontsize: float):
    """Annotated heatmap with vmin 0, vmax 1; NaN cells grey and marked ``n/a``."""
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(
        range(len(xlabels)),
        xlabels,
        rotation=45 if max(map(len, xlabels), default=0) > 3 else 0,
        ha="right" if max(map(len, xlabels), default=0) > 3 else "center",
    )
    ax.set_yticks(range(len(ylabels)), ylabels)
    for (i, j), v in np.ndenumerate(matrix):
        text = "n/a" if np.isnan(v) else f"{v:.2f}"
        colour = "black" if np.isnan(v) or v > 0.6 else "white"
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    return im


def plot_overlap(jaccard_table: pa.Table, model: str, out: str | Path) -> None:
    """Jaccard overlap heatmaps: languages x languages per method (top) and method pairs
    per language, MLP neurons only (bottom)."""
    rows = jaccard_table.to_pylist()
    lang_rows = [r for r in rows if r["kind"] == "language"]
    method_rows = [r for r in rows if r["kind"] == "method"]
    methods = list(dict.fromkeys(r["method"] for r in lang_rows))
    langs = list(dict.fromkeys([r["a"] for r in lang_rows] + [r["b"] for r in lang_rows]))
    langs += [lang for lang in dict.fromkeys(r["lang"] for r in method_rows) if lang not in langs]
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in method_rows))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.8")

    n_top = max(1, len(methods))
    side = max(3.6, 0.42 * len(langs) + 1.2)
    fig = plt.figure(
        figsize=(
            max(side * n_top + 1.0, 0.75 * len(langs) + 4),
            side + 0.45 * max(len(pairs), 1) + 2.6,
        ),
        layout="constrained",
    )
    heights = [side, 0.45 * max(len(pairs), 1) + 0.8]
    grid = fig.add_gridspec(2, n_top, height_ratios=heights)
    im = None
    for col, method in enumerate(methods):
        ax = fig.add_subplot(grid[0, col])
        mine = [r for r in lang_rows if r["method"] == method]
        order = [lang for lang in langs if any(lang in (r["a"], r["b"]) for r in mine)]
        pos = {lang: i for i, lang in enumerate(order)}
        matrix = np.full((len(order), len(order)), np.nan)
        for r in mine:
            value = math.nan if r["jaccard"] is None else r["jaccard"]
            matrix[pos[r["a"]], pos[r["b"]]] = matrix[pos[r["b"]], pos[r["a"]]] = value
        im = _heatmap(ax, matrix, order, order, cmap, 8 if len(order) <= 14 else 6)
        modules = mine[0]["modules"] if mine and mine[0].get("modules") else ""
        sizes = {r["a"]: r["n_a"] for r in mine if r["a"] == r["b"]}
        ax.set_title(
            f"{method} ({modules}): languages x languages\n"
            f"{sum(sizes.values()):,} selected neurons in total",
            fontsize=10,
        )
    if not methods:
        ax = fig.add_subplot(grid[0, 0])
        ax.axis("off")
        ax.text(0.5, 0.5, "no language pairs", ha="center", va="center", transform=ax.transAxes)
    bottom = fig.add_subplot(grid[1, :])
    if pairs:
        pair_langs = [lang for lang in langs if any(r["lang"] == lang for r in method_rows)]
        matrix = np.full((len(pairs), len(pair_langs)), np.nan)
        for r in method_rows:
            value = math.nan if r["jaccard"] is None else r["jaccard"]
            matrix[pairs.index((r["a"], r["b"])), pair_langs.index(r["lang"])] = value
        im = _heatmap(bottom, matrix, pair_langs, [f"{a} vs {b}" for a, b in pairs], cmap, 9)
        bottom.set_xlabel("language")
        with_attention = [
            r["method"] for r in lang_rows if r["a"] == r["b"] and r["modules"] not in (None, "mlp")
        ]
        dropped = ", ".join(dict.fromkeys(with_attention))
        note = f"\n(attention neurons of {dropped} left out)" if dropped else ""
        bottom.set_title(
            f"method vs method per language: MLP neurons only (module == mlp){note}",
            fontsize=10,
        )
    else:
        bottom.axis("off")
        bottom.text(
            0.5,
            0.5,
            "fewer than two methods: no method pairs to compare",
            ha="center",
            va="center",
            transform=bottom.transAxes,
        )
    if im is not None:
        fig.colorbar(
            im, ax=fig.axes, shrink=0.6, label="Jaccard = |A ∩ B| / |A ∪ B|  (grey: both empty)"
        )
    fig.suptitle(
        f"{model}: overlap of language-specific neuron sets\n"
        f"methods: {', '.join(methods) or 'none'}; languages: {', '.join(langs) or 'none'}",
        fontsize=12,
    )
    save(fig, out)


def _logit_lens_shares(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], int | None]:
    """``(layers, {lang_of_token: share per layer}, n_tokens of a layer or None)``."""
    table = read_parquet(path)
    missing = [c for c in LOGIT_LENS_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {table.column_names}")
    layer = np.asarray(table["layer"].to_pylist(), dtype=np.int64)
    n_layers = int(layer.max()) + 1 if layer.size else 0
    shares: dict[str, np.ndarray] = {}
    for la, tok_lang, ratio in zip(
        layer, table["lang_of_token"].to_pylist(), table["ratio"].to_pylist(), strict=True
    ):
        shares.setdefault(str(tok_lang), np.zeros(n_layers))[la] += ratio
    n_tokens = None
    if "n_tokens" in table.column_names and table.num_rows:
        n_tokens = int(table["n_tokens"].to_pylist()[0])
    return np.arange(n_layers), shares, n_tokens


def plot_logit_lens(
    tables: Mapping[str, str | Path],
    model: str,
    out: str | Path,
    final_norm: bool,
    stages: tuple[int, int] | None = None,
) -> None:
    """Language of the logit-lens top-k tokens per layer: one panel per input language.

    Lines: English, the input language, other (same colours in every panel).
    ``stages`` optionally shades the understanding/generation layers.
    """
    langs = list(tables)
    fig, axes = _grid(len(langs), 5, 3.6, 2.9, sharey=True)
    for ax, lang in zip(axes, langs, strict=False):
        x, shares, n_tokens = _logit_lens_shares(tables[lang])
        roles = (
            [(ENGLISH, ENGLISH)] + ([("input", lang)] if lang != ENGLISH else []) + [(OTHER, OTHER)]
        )
        for role, key in roles:
            if x.size:
                ax.plot(x, shares.get(key, np.zeros(x.size)), marker="o", ms=2, **ROLE_STYLE[role])
        if x.size and stages is not None:
            _shade_stages(ax, _stage_spans(x.size, stages), label_top=False)
        if not x.size:
            ax.text(0.5, 0.5, "no tokens", ha="center", va="center", transform=ax.transAxes)
        title = f"input: {condition_label(lang)}"
        if n_tokens is not None:
            title += f"\n{n_tokens:,} top-k tokens per layer"
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("share of top-k tokens")
        ax.set_ylim(-0.02, 1.02)
        if x.size:
            ax.set_xlim(-0.5, x.size - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if not langs:
        axes[0].text(
            0.5, 0.5, "no logit-lens tables", ha="center", va="center", transform=axes[0].transAxes
        )
    for ax in axes:
        if ax.get_subplotspec().is_first_col() is False:
            ax.set_ylabel("")
    norm = (
        "final norm applied before the LM head (usual logit lens)"
        if final_norm
        else "LM head on the raw hidden states, no final norm (as in Zhao et al.)"
    )
    fig.suptitle(f"{model}: language of the logit-lens top-k tokens per layer\n{norm}", fontsize=12)
    fig.tight_layout()
    handles = [plt.Line2D([], [], marker="o", ms=3, **ROLE_STYLE[r]) for r in ROLE_STYLE]
    if stages is not None:
        handles += [
            Patch(facecolor=c, alpha=0.25, label=f"{n} stage") for n, c in STAGE_COLOURS.items()
        ]
    fig.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=9,
        title="token language",
        frameon=False,
    )
    save(fig, out)


def plot_neuron_figures(
    tables: Mapping[str, Mapping[str, str | Path]],
    logit_lens_tables: Mapping[str, str | Path],
    model: str,
    layers_out: str | Path,
    overlap_out: str | Path,
    logit_lens_out: str | Path,
    counts_csv: str | Path,
    jaccard_csv: str | Path,
    final_norm: bool,
    n_layers: int | None = None,
    stages: tuple[int, int] | None = None,
) -> None:
    """All neuron-selection figures and tables of one model (``stages`` default: scaled
    from Zhao et al., see :func:`default_stages`)."""
    counts = selection_counts(tables, n_layers)
    if n_layers is None:
        n_layers = max(counts["layer"].to_pylist(), default=-1) + 1
    if stages is None:
        stages = default_stages(max(n_layers, 1))
    overlap = jaccard_tables(tables)
    write_tables(counts, overlap, counts_csv, jaccard_csv)
    plot_layers(counts, model, n_layers, stages, layers_out)
    plot_overlap(overlap, model, overlap_out)
    plot_logit_lens(logit_lens_tables, model, logit_lens_out, final_norm, stages)

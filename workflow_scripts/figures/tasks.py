"""The task figures (docs/methods.md, "Task evaluation"): Mu et al.'s input conditions
per task subset, and Zhao et al.'s layer-stage x structure table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from workflow_scripts.figures.style import save
from workflow_scripts.tasks.stages import CELLS

CONDITION_COLORS = {"monolingual": "C7", "pim": "C0", "repeat": "C1"}
CELL_LABELS = {
    "understanding": "understanding layers (all)",
    "task_attention": "task-solving layers, attention",
    "task_ffn": "task-solving layers, FFN",
    "generation": "generation layers (all)",
    "all": "all layers",
}


def _bars(ax, table: pd.DataFrame, value: str, low: str | None, high: str | None, ylabel, title):
    subsets = list(dict.fromkeys(table["subset"]))
    conditions = [c for c in CONDITION_COLORS if c in set(table["condition"])]
    width = 0.8 / max(1, len(conditions))
    x = np.arange(len(subsets))
    for j, condition in enumerate(conditions):
        rows = table[table["condition"] == condition].set_index("subset").reindex(subsets)
        y = rows[value].to_numpy(dtype=float)
        err = None
        if low and high:
            err = np.vstack([y - rows[low].to_numpy(float), rows[high].to_numpy(float) - y])
        ax.bar(
            x + (j - (len(conditions) - 1) / 2) * width,
            y,
            width,
            yerr=err,
            capsize=2,
            color=CONDITION_COLORS[condition],
            label=condition,
        )
    ax.set_xticks(x, [s.replace("-", "->") for s in subsets])
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=7)


def plot_pim(table: pd.DataFrame, model: str, out: str | Path) -> None:
    """Per task: the mean per-item score of each condition with its 95% bootstrap interval,
    the corpus BLEU (translation), and the inhibited MLP share during the generations."""
    tasks = list(dict.fromkeys(table["task"]))
    has_bleu = "bleu" in table and table["bleu"].notna().any()
    n_cols = 2 + has_bleu
    fig, axes = plt.subplots(
        len(tasks),
        n_cols,
        figsize=(4.6 * n_cols, 3.6 * len(tasks)),
        squeeze=False,
        layout="constrained",
    )
    k = ", ".join(sorted(set(table["condition"])))
    fig.suptitle(f"Parallel multilingual input (Mu et al.), {model}: {k}")
    for row, task in zip(axes, tasks, strict=True):
        t = table[table["task"] == task]
        metric = t["metric"].iloc[0]
        _bars(
            row[0],
            t,
            "score",
            "score_low",
            "score_high",
            f"mean per-item {metric}",
            f"{task}: {metric} per item (95% CI)",
        )
        col = 1
        if has_bleu:
            _bars(row[1], t, "bleu", None, None, "corpus BLEU (sacrebleu)", f"{task}: corpus BLEU")
            col = 2
        _bars(
            row[col],
            t,
            "inhibited_share",
            None,
            None,
            "inhibited MLP neurons (share)",
            f"{task}: inhibited share during generation",
        )
        vals = t["inhibited_share"].dropna()
        if len(vals):
            pad = max(0.005, 0.2 * (vals.max() - vals.min()))
            row[col].set_ylim(vals.min() - pad, vals.max() + pad)
    save(fig, out)


def _matrix(table: pd.DataFrame, value: str) -> tuple[np.ndarray, list[str], list[str]]:
    cells = [c for c in CELLS if c in set(table["cell"])]
    cols = []
    for lang in dict.fromkeys(table["lang"]):
        cols += [(lang, lang), (lang, "en")]
    m = np.full((len(cells), len(cols)), np.nan)
    for i, cell in enumerate(cells):
        for j, (lang, ev) in enumerate(cols):
            r = table[
                (table["cell"] == cell) & (table["lang"] == lang) & (table["eval_lang"] == ev)
            ]
            sel, rnd = r[r["control"] == "selected"], r[r["control"] == "random"]
            if len(sel):
                m[i, j] = sel[value].mean() - (rnd[value].mean() if len(rnd) else 0.0)
    labels = [f"{lang} task" if ev == lang else f"en task\n({lang} neurons)" for lang, ev in cols]
    return m, [CELL_LABELS[c] for c in cells], labels


def _ratio_text(log2_ratio: float) -> str:
    r = 2.0**log2_ratio
    return f"x{r:.3g}" if r < 1000 else f"x{r:.1e}".replace("e+0", "e").replace("e+", "e")


def plot_layer_stages(table: pd.DataFrame, model: str, out: str | Path) -> None:
    """Rows: stage x structure cells; columns: each language's task and the English task
    with that language's neurons deactivated. Left: the task score's drop from the
    unablated model, minus the random control's (points); right: the perplexity ratio of
    the selected to the random units (log2 colours, annotated as a factor: ablations
    span 1.1x to 10^4x). Diverging colours centred on 0, one scale per panel."""
    task = ", ".join(dict.fromkeys(table["task"]))
    table = table.assign(log2_ppl=np.log2(1 + table["ppl_change"]))
    panels = [
        ("drop", f"{task}: score drop, selected - random (points)", "points of accuracy"),
        ("log2_ppl", "perplexity, selected / random", "log2 perplexity ratio"),
    ]
    langs = ", ".join(dict.fromkeys(table["lang"]))
    n_cols = 2 * table["lang"].nunique()
    fig, axes = plt.subplots(1, 2, figsize=(2 * (2.2 + 0.9 * n_cols), 4.2), layout="constrained")
    fig.suptitle(f"Layer-stage x structure ablation (Zhao et al.), {model}: {langs} vs en")
    for ax, (value, title, unit) in zip(axes, panels, strict=True):
        m, rows, cols = _matrix(table, value)
        data = m * 100 if value == "drop" else m
        lim = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
        im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if np.isfinite(data[i, j]):
                    text = f"{data[i, j]:+.1f}" if value == "drop" else _ratio_text(m[i, j])
                    color = "white" if abs(data[i, j]) > 0.6 * lim else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(cols)), cols, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8).set_label(unit)
    save(fig, out)

"""The fine-tuning figure: per experiment and trained language, each variant's relative
perplexity change on the trained language, on English and on the other languages' mean,
with 95% bootstrap intervals (results/tables/finetune_{model}.csv)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from workflow_scripts.figures.style import condition_label, save
from workflow_scripts.training.summary import OTHERS

TITLES = {
    "enhance": "Neuron enhancement (Zhao et al.)",
    "forget": "Continued training, a region frozen (Zhang et al.)",
}
LABELS = {  # experiment -> variant -> label, in the experiment's order
    "enhance": {
        "neurons": "its neurons",
        "random": "random neurons",
        "full": "all parameters",
        "lora": "LoRA",
    },
    "forget": {
        "none": "nothing frozen",
        "core": "core frozen",
        "random": "random region frozen",
        "monolingual": "monolingual frozen",
    },
}
SERIES = [("trained", "trained language", "tab:blue"), ("en", "English", "tab:green")]
SERIES += [(OTHERS, "all other languages (mean, English included)", "tab:red")]


def _series(part: pd.DataFrame, lang: str, key: str) -> pd.DataFrame:
    ppl = part[part["measure"] == "ppl"]
    eval_lang = lang if key == "trained" else key
    return ppl[ppl["eval_lang"] == eval_lang].set_index("variant")


def plot_finetune(summary: pd.DataFrame, model: str, out: str | Path) -> None:
    """One panel per (experiment, trained language): grouped bars per variant."""
    panels = list(summary.groupby(["experiment", "lang"], sort=True).groups)
    if not panels:
        raise ValueError("finetune figure: the summary table is empty")
    experiments = sorted({e for e, _ in panels}, key=list(TITLES).index)
    langs = sorted({lang for _, lang in panels})
    fig, axes = plt.subplots(
        len(experiments),
        len(langs),
        figsize=(4.8 * len(langs), 3.6 * len(experiments)),
        squeeze=False,
        sharey="row",
    )
    for i, exp in enumerate(experiments):
        for j, lang in enumerate(langs):
            ax = axes[i][j]
            part = summary[(summary["experiment"] == exp) & (summary["lang"] == lang)]
            if part.empty:
                ax.set_axis_off()
                continue
            variants = [v for v in LABELS[exp] if v in set(part["variant"])]
            x = np.arange(len(variants))
            width = 0.8 / len(SERIES)
            for k, (key, label, color) in enumerate(SERIES):
                s = _series(part, lang, key).reindex(variants)
                if s["change"].isna().all():
                    continue
                y = 100 * s["change"].to_numpy(float)
                err = 100 * np.abs(
                    np.vstack([s["change"] - s["ci_low"], s["ci_high"] - s["change"]])
                ).astype(float)
                ax.bar(x + (k - 1) * width, y, width, yerr=err, capsize=2, color=color, label=label)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(x, [LABELS[exp][v] for v in variants], rotation=20, ha="right")
            steps = int(part["steps"].iloc[0])
            ax.set_title(
                f"{TITLES[exp]}\ntrained on {condition_label(lang)}, {steps} steps", fontsize=9
            )
            if j == 0:
                ax.set_ylabel("perplexity change after / before (%)")
            ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(
        f"{model}: fine-tuning gain on the trained language vs change elsewhere\n"
        "(below 0 = lower perplexity; error bars: 95% bootstrap intervals over documents)",
        fontsize=10,
    )
    fig.tight_layout()
    save(fig, out)

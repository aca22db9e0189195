"""Collected task tables: PiM conditions and layer-stage cells, with bootstrap intervals
over items (docs/methods.md, "Task evaluation").

- :func:`pim_summary`: per (task, subset, condition): the mean per-item score with its
  interval, the corpus BLEU / chrF of translation tasks, the mean inhibited share, and
  the paired per-item difference to ``monolingual`` (and, for ``pim``, to ``repeat``)
  of the score, the sentence BLEU (translation) and the inhibited share;
- :func:`stage_summary`: per (task, language, cell, eval language, control): the mean
  score, the paired per-item drop from the unablated score (random draws averaged per
  item) with its interval, and the perplexity change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.bootstrap import bootstrap_interval
from workflow_scripts.io import read_metadata, read_parquet
from workflow_scripts.tasks.metrics import corpus_scores

PathLike = str | Path
# per-item columns compared between conditions: (column prefix, column); bleu is the
# sentence BLEU of translation items (the summary's own bleu / chrf are corpus scores)
PAIRED = (("", "score"), ("bleu_", "bleu"), ("inhibited_", "inhibited_share"))


def eval_frames(paths: Sequence[PathLike]) -> pd.DataFrame:
    """The per-item rows of several evaluation files, with task, subset and metric."""
    frames = []
    for path in paths:
        meta = read_metadata(path)
        df = read_parquet(path).to_pandas()
        frames.append(df.assign(task=meta["task"], subset=meta["subset"], metric=meta["metric"]))
    return pd.concat(frames, ignore_index=True)


def paired(a: pd.Series, b: pd.Series, seed: int = 0) -> tuple[float, float, float, int]:
    """``(mean, ci_low, ci_high, n)`` of the per-item difference ``a - b`` (items by index)."""
    diff = (a - b).dropna()
    lo, hi = bootstrap_interval(diff.to_numpy(), seed=seed)
    return float(diff.mean()) if len(diff) else float("nan"), lo, hi, len(diff)


def pim_summary(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per (task, subset, condition) of the PiM evaluation rows."""
    rows = []
    for (task, subset), part in df.groupby(["task", "subset"], sort=True):
        by = {c: g.set_index("id") for c, g in part.groupby("condition")}
        for condition, g in by.items():
            lo, hi = bootstrap_interval(g["score"].to_numpy(), seed=seed)
            row = {
                "task": task,
                "subset": subset,
                "condition": condition,
                "metric": g["metric"].iloc[0],
                "n_items": len(g),
                "score": g["score"].mean(),
                "score_low": lo,
                "score_high": hi,
                "inhibited_share": g["inhibited_share"].mean(),
            }
            if g["bleu"].notna().any():
                target = g["target"].iloc[0]
                row.update(corpus_scores(g["generation"], g["reference"], target))
            for other in ("monolingual", "repeat"):
                if (
                    other in by
                    and other != condition
                    and not (other == "repeat" and condition != "pim")
                ):
                    for prefix, col in PAIRED:
                        if g[col].notna().any():
                            mean, lo, hi, _ = paired(g[col], by[other][col], seed)
                            name = f"{prefix}vs_{other}"
                            row |= {name: mean, f"{name}_low": lo, f"{name}_high": hi}
            rows.append(row)
    return pd.DataFrame(rows)


def stage_ppl(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Perplexities of the layer-stage files: task, subset, cell, eval_lang, control, seed, ppl."""
    rows = []
    for path in paths:
        meta = read_metadata(path)
        for key, value in meta["ppl"].items():
            eval_lang, control, seed = key.split("/")
            rows.append(
                {
                    "task": meta["task"],
                    "subset": meta["subset"],
                    "cell": meta["cell"],
                    "eval_lang": eval_lang,
                    "control": control,
                    "seed": int(seed),
                    "ppl": value["ppl"],
                }
            )
    return pd.DataFrame(rows)


def item_scores(df: pd.DataFrame, control: str) -> pd.Series:
    """Per-item score of one control (random draws averaged), indexed by id."""
    return df[df["control"] == control].groupby("id")["score"].mean()


def stage_summary(df: pd.DataFrame, ppl: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per (task, language, cell, eval language, control) of the layer-stage rows."""
    df = df.assign(cell=df["condition"].str.removeprefix("stage-"))
    rows = []
    for (task, subset, eval_lang), part in df.groupby(["task", "subset", "eval_lang"]):
        base = item_scores(part[part["cell"] == "none"], "none")
        pbase = ppl[
            (ppl["task"] == task)
            & (ppl["subset"] == subset)
            & (ppl["cell"] == "none")
            & (ppl["eval_lang"] == eval_lang)
        ]["ppl"]
        base_ppl = float(pbase.iloc[0]) if len(pbase) else np.nan
        for cell, g in part[part["cell"] != "none"].groupby("cell"):
            for control in ("selected", "random"):
                scores = item_scores(g, control)
                if scores.empty:
                    continue
                drop, lo, hi, n = paired(base, scores, seed)
                p = ppl[
                    (ppl["task"] == task)
                    & (ppl["subset"] == subset)
                    & (ppl["cell"] == cell)
                    & (ppl["eval_lang"] == eval_lang)
                    & (ppl["control"] == control)
                ]["ppl"].mean()
                rows.append(
                    {
                        "task": task,
                        "lang": subset,
                        "cell": cell,
                        "eval_lang": eval_lang,
                        "control": control,
                        "n_units": int(g[g["control"] == control]["n_units"].iloc[0]),
                        "n_items": n,
                        "base_score": float(base.mean()),
                        "score": float(scores.mean()),
                        "drop": drop,
                        "drop_low": lo,
                        "drop_high": hi,
                        "base_ppl": base_ppl,
                        "ppl": float(p),
                        "ppl_change": float(p) / base_ppl - 1,
                    }
                )
    return pd.DataFrame(rows)

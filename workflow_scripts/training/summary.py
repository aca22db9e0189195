"""The fine-tuning experiments collected and summarised (docs/methods.md, "Fine-tuning").

:func:`collect` stacks the per-job tables (one row per evaluation language, measure and
phase, with the per-document / per-item values) with each job's record (steps, elements
changed, train seconds, losses). :func:`change_samples` gives one measure's change from
before to after and its bootstrap resamples: perplexity ``after / before - 1`` with each
language's documents resampled (the same draw before and after, and for every variant
of a language: the comparisons are paired), a task score ``after - before`` with items
resampled (no interval with fewer than :data:`MIN_ITEMS`). :func:`summarize` is the
table of results/tables/finetune_{model}.csv.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.bootstrap import N_RESAMPLES, percentile_interval, resample_counts
from workflow_scripts.io import read_metadata, read_parquet

PathLike = str | Path
KEYS = ["experiment", "lang", "variant"]
RECORD = ["restriction", "steps", "n_changed", "n_parameters", "train_seconds"]
RECORD += ["loss_first", "loss_last", "lr", "n_docs_used", "peak_rss_mb_first", "peak_rss_mb_last"]
OTHERS = "others"  # the mean over the evaluation languages other than the trained one
MIN_ITEMS = 5  # fewer documents (items) give no interval: a bootstrap of 1-4 items is noise
SUMMARY_COLUMNS = [*KEYS, "eval_lang", "measure", "before", "after", "change"]
SUMMARY_COLUMNS += ["ci_low", "ci_high", "n_items", *RECORD]


def collect(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Every job's rows with its experiment, trained language, variant and record."""
    frames = []
    for path in paths:
        meta = read_metadata(path)
        df = read_parquet(path).to_pandas()
        for key in KEYS:
            df[key] = meta[key]
        for key in RECORD:
            df[key] = meta.get(key)
        frames.append(df)
    if not frames:
        raise ValueError("finetune: no experiment table to collect")
    return pd.concat(frames, ignore_index=True)


def _counts(eval_lang: str, measure: str, n: int, seed: int) -> np.ndarray:
    """The resample counts of one language's items: the same for every variant."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{eval_lang}/{measure}".encode())])
    return resample_counts(n, N_RESAMPLES, rng)


def change_samples(
    rows: pd.DataFrame, eval_lang: str, measure: str, seed: int = 0
) -> tuple[float, np.ndarray]:
    """``(change, resampled changes)`` of one job's ``eval_lang`` and ``measure``."""
    pick = rows[(rows["eval_lang"] == eval_lang) & (rows["measure"] == measure)]
    by_phase = {r.phase: r for r in pick.itertuples()}
    if set(by_phase) != {"before", "after"}:
        return math.nan, np.full(N_RESAMPLES, np.nan)
    b, a = by_phase["before"], by_phase["after"]
    vb, va = np.asarray(b.item_values, float), np.asarray(a.item_values, float)
    w = np.asarray(b.item_weights, float)
    if len(vb) != len(va) or not np.array_equal(w, np.asarray(a.item_weights, float)):
        job = "/".join(str(rows[k].iloc[0]) for k in KEYS if k in rows)
        raise ValueError(f"finetune {job}: {eval_lang} {measure}: before and after differ in items")
    c = _counts(eval_lang, measure, len(vb), seed)
    if measure == "ppl":  # ppl_a / ppl_b - 1 = exp(sum(nll_a - nll_b) / sum(tokens)) - 1
        point, samples = math.expm1((va - vb).sum() / w.sum()), np.expm1(c @ (va - vb) / (c @ w))
    else:
        point, samples = float((va - vb).mean()), c @ (va - vb) / len(vb)
    if len(vb) < MIN_ITEMS:
        samples = np.full(N_RESAMPLES, np.nan)
    return point, samples


def others_samples(
    rows: pd.DataFrame, lang: str, seed: int = 0
) -> tuple[float, np.ndarray, list[str]]:
    """The mean perplexity change over the evaluation languages other than ``lang``."""
    langs = sorted(set(rows.loc[rows["measure"] == "ppl", "eval_lang"]) - {lang})
    if not langs:
        return math.nan, np.full(N_RESAMPLES, np.nan), []
    parts = [change_samples(rows, e, "ppl", seed) for e in langs]
    return float(np.mean([p for p, _ in parts])), np.mean([s for _, s in parts], axis=0), langs


def summarize(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per job and (evaluation language, measure), plus its ``others`` row."""
    out = []
    for key, rows in df.groupby(KEYS, sort=True):
        record = dict(zip(KEYS, key, strict=True))
        record.update({k: rows[k].iloc[0] for k in RECORD})
        for (eval_lang, measure), part in rows.groupby(["eval_lang", "measure"], sort=True):
            phase = part.set_index("phase")["value"]
            point, samples = change_samples(rows, eval_lang, measure, seed)
            lo, hi = percentile_interval(samples)
            out.append(
                {
                    **record,
                    "eval_lang": eval_lang,
                    "measure": measure,
                    "before": phase.get("before", math.nan),
                    "after": phase.get("after", math.nan),
                    "change": point,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_items": len(part["item_values"].iloc[0]),
                }
            )
        point, samples, langs = others_samples(rows, record["lang"], seed)
        lo, hi = percentile_interval(samples)
        out.append(
            {
                **record,
                "eval_lang": OTHERS,
                "measure": "ppl",
                "before": math.nan,
                "after": math.nan,
                "change": point,
                "ci_low": lo,
                "ci_high": hi,
                "n_items": len(langs),
            }
        )
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)

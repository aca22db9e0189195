"""The findings rows of the fine-tuning experiments (claims P-T), from the collected
per-document table, each judged by a paired bootstrap interval of its margin (positive
when the claim holds; docs/methods.md, "Fine-tuning").

Perplexity changes are ``after / before - 1`` (negative: the fine-tune helped); each
language's documents are resampled with the same draw for every variant, so variant
differences are paired. A claim's margin is averaged over the trained languages.

- P (Zhao et al.): neurons vs an equal-count random set, the trained language's
  perplexity: margin = change(random) - change(neurons);
- Q (Zhao et al.): English kept under neuron enhancement: margin = 1% - change(neurons, en)
  (holds when the whole interval of English's change is below +1%);
- R (Zhao et al.): the trained language's task score, neurons vs random: margin =
  gain(neurons) - gain(random);
- S (Zhang et al.): the other languages' forgetting, core frozen vs an equal-size random
  region frozen: margin = change(random, others) - change(core, others);
- T (Zhang et al.): the trained language still gains with the core frozen: margin =
  -change(core, trained language).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.bootstrap import N_RESAMPLES, percentile_interval
from workflow_scripts.training.summary import change_samples, others_samples

ZHAO, ZHANG = "Zhao et al. 2024 (PLND)", "Zhang et al. 2024"
ENGLISH_TOLERANCE = 0.01
INTERVAL = (
    f"{N_RESAMPLES} bootstrap resamples of each evaluation language's documents (items), seed 0"
)
FINETUNE_CLAIMS = {  # claim_id -> (claim, measure, source, experiment)
    "P": (
        "Fine-tuning only a language's neurons improves that language more than fine-tuning "
        "an equal-count random neuron set.",
        "Relative PPL change of the trained language after enhancing its neurons (value) vs "
        "an equal-count random set at the same steps and data (reference), mean over trained "
        "languages; holds if the interval of random minus neurons is above 0.",
        ZHAO,
        "enhance",
    ),
    "Q": (
        "Enhancing a language's neurons keeps English.",
        "Relative English PPL change after neuron enhancement (value) vs the 1% tolerance "
        "(reference); holds if the whole interval is below +1%.",
        ZHAO,
        "enhance",
    ),
    "R": (
        "Enhancing a language's neurons improves its task score more than a random set.",
        "Task score gain of the trained language, neurons (value) vs random (reference); "
        "holds if the interval of the difference is above 0.",
        ZHAO,
        "enhance",
    ),
    "S": (
        "Freezing the core region mitigates forgetting of the other languages more than "
        "freezing an equal-size random region.",
        "Mean relative PPL change of the other languages after continued training with the "
        "core frozen (value) vs a random region frozen (reference); holds if the interval of "
        "random minus core is above 0.",
        ZHANG,
        "forget",
    ),
    "T": (
        "With the core region frozen the trained language still gains.",
        "Relative PPL change of the trained language with the core frozen (value; reference: "
        "nothing frozen); holds if the interval of its decrease is above 0.",
        ZHANG,
        "forget",
    ),
}


def _row(cid, value=math.nan, reference=math.nan, ci=None, detail="", margin=math.nan) -> dict:
    """One claim's row: it holds when the ``margin`` estimate and its interval ``ci`` are
    above 0."""
    claim, measure, source, experiment = FINETUNE_CLAIMS[cid]
    lo, hi = ci if ci is not None else (math.nan, math.nan)
    judged = not (math.isnan(lo) or math.isnan(hi) or math.isnan(margin))
    return {
        "claim_id": cid,
        "claim": claim,
        "source": source,
        "method": f"finetune {experiment}",
        "measure": measure,
        "value": float(value),
        "reference": float(reference),
        "holds": bool(margin > 0 and lo > 0) if judged else None,
        "detail": detail,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "interval": INTERVAL if judged else "",
    }


Measure = Callable[[pd.DataFrame, str], tuple[float, np.ndarray]]


def _trained(rows: pd.DataFrame, lang: str) -> tuple[float, np.ndarray]:
    return change_samples(rows, lang, "ppl")


def _english(rows: pd.DataFrame, lang: str) -> tuple[float, np.ndarray]:
    if lang == "en":  # English trained on is not English kept
        return math.nan, np.full(N_RESAMPLES, np.nan)
    return change_samples(rows, "en", "ppl")


def _others(rows: pd.DataFrame, lang: str) -> tuple[float, np.ndarray]:
    point, samples, _ = others_samples(rows, lang)
    return point, samples


def _task(rows: pd.DataFrame, lang: str) -> tuple[float, np.ndarray]:
    measures = set(rows["measure"]) - {"ppl"}
    if not measures:
        return math.nan, np.full(N_RESAMPLES, np.nan)
    return change_samples(rows, lang, sorted(measures)[0])


def _per_language(df: pd.DataFrame, experiment: str, variant: str, measure: Measure):
    """lang -> (point, samples) of ``measure`` for every trained language with ``variant``
    where it was measured."""
    part = df[(df["experiment"] == experiment) & (df["variant"] == variant)]
    values = {lang: measure(rows, lang) for lang, rows in part.groupby("lang", sort=True)}
    return {k: v for k, v in values.items() if not math.isnan(v[0])}


def _compare(df, cid, experiment, a, b, measure, sign, what) -> dict:
    """Margin ``sign * (b - a)`` averaged over the languages that measured both variants."""
    va, vb = (_per_language(df, experiment, v, measure) for v in (a, b))
    langs = sorted(set(va) & set(vb))
    if not langs:
        return _row(cid, detail=f"not computed: no {what} of both {a} and {b} ({experiment})")
    pa_, pb = np.mean([va[x][0] for x in langs]), np.mean([vb[x][0] for x in langs])
    margin = sign * np.mean([vb[x][1] - va[x][1] for x in langs], axis=0)
    unit = "+.3f" if measure is _task else "+.2%"  # a score difference, or a relative change
    per = ", ".join(f"{x} {va[x][0]:{unit}} vs {vb[x][0]:{unit}}" for x in langs)
    lo, hi = percentile_interval(margin)
    detail = f"{what} {a} vs {b}: {per}; margin [{lo:+.4f}, {hi:+.4f}]"
    return _row(cid, pa_, pb, (lo, hi), detail, sign * (pb - pa_))


def finetune_claims(df: pd.DataFrame | None) -> list[dict]:
    """Claims P-T from the collected fine-tuning table (None: not computed)."""
    if df is None or df.empty:
        skip = "not computed: no fine-tuning experiment (finetune.experiments or languages empty)"
        return [_row(cid, detail=skip) for cid in FINETUNE_CLAIMS]
    rows = [
        _compare(df, "P", "enhance", "neurons", "random", _trained, 1, "trained-language PPL"),
        _tolerance(df),
        _compare(df, "R", "enhance", "neurons", "random", _task, -1, "task score gain"),
        _compare(df, "S", "forget", "core", "random", _others, 1, "other languages' PPL"),
        _core_gain(df),
    ]
    return rows


def _tolerance(df: pd.DataFrame) -> dict:
    values = _per_language(df, "enhance", "neurons", _english)
    if not values:
        return _row("Q", detail="not computed: no neuron enhancement with English evaluated")
    point = float(np.mean([v[0] for v in values.values()]))
    margin = ENGLISH_TOLERANCE - np.mean([v[1] for v in values.values()], axis=0)
    lo, hi = percentile_interval(margin)
    per = ", ".join(f"{k} {v[0]:+.2%}" for k, v in values.items())
    detail = f"English PPL change by trained language: {per}"
    return _row("Q", point, ENGLISH_TOLERANCE, (lo, hi), detail, ENGLISH_TOLERANCE - point)


def _core_gain(df: pd.DataFrame) -> dict:
    core = _per_language(df, "forget", "core", _trained)
    none = _per_language(df, "forget", "none", _trained)
    if not core:
        return _row("T", detail="not computed: no forgetting run with the core frozen")
    point = float(np.mean([v[0] for v in core.values()]))
    reference = float(np.mean([v[0] for v in none.values()])) if none else math.nan
    lo, hi = percentile_interval(-np.mean([v[1] for v in core.values()], axis=0))
    per = ", ".join(
        f"{k} {v[0]:+.2%} (nothing frozen {none[k][0]:+.2%})" if k in none else f"{k} {v[0]:+.2%}"
        for k, v in core.items()
    )
    detail = f"trained-language PPL change, core frozen: {per}"
    return _row("T", point, reference, (lo, hi), detail, -point)

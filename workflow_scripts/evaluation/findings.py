"""The findings table: one row per claim of the seed papers, measured on one model.

Each row gives the measured ``value``, the ``reference`` it is compared against and
whether the claim ``holds``. A missing input leaves its claims uncomputed (``holds``
null, ``detail`` "not computed: ..."); no number is ever filled in.
Relative perplexity change is ``ppl / base_ppl - 1`` throughout.

Every claim is judged by a seeded bootstrap interval (1,000 resamples, 95%) of its
*margin*, the quantity that is positive when the claim holds: A-D resample each
evaluation language's documents (the same draw for every row of a language, so the
comparisons are paired) and recompute the pooled perplexities from the per-document
NLL; E-G resample layers (the inhibition and selection tables are per layer: one
selection has no document-level sampling to redo, so their interval says how much the
comparison rests on a few layers); H-J resample prompts, K-O items. A claim holds only
when its estimate says so and the interval is above 0; a perplexity table without
per-document NLL (made before the intervals) leaves A-D unjudged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.ablation import MATRIX_COLUMNS
from workflow_scripts.evaluation.bootstrap import (
    N_RESAMPLES,
    bootstrap_interval,
    percentile_interval,
    resample_counts,
)
from workflow_scripts.evaluation.steering import best_settings, summarize
from workflow_scripts.io import read_metadata, read_parquet, write_frame
from workflow_scripts.neurons.summary import default_stages, selection_counts
from workflow_scripts.regions.scores import IMPORTANT_END
from workflow_scripts.tasks.claims import pim_claims, stage_claims
from workflow_scripts.training.claims import finetune_claims

PathLike = str | Path
COLUMNS = ["model", "claim_id", "claim", "source", "method", "measure"]
COLUMNS += ["value", "reference", "holds", "detail"]
# the 95% bootstrap interval of the claim's margin (positive: the claim's direction); a
# claim holds only when its estimate says so and the interval is above 0
INTERVAL_COLUMNS = ["ci_low", "ci_high", "interval"]
PROMPTS, LAYERS = "prompts", "layers"
DOCS = "each evaluation language's documents"
SOURCES = {
    "plnd": "Zhao et al. 2024 (PLND)",
    "lape": "Tang et al. 2024 (LAPE)",
    "actcount": "Mu et al. 2024",
    "region": "Zhang et al. 2024",
}
CLAIMS = {  # claim_id -> (claim, how it is measured)
    "A": (
        "Removing a language's neurons raises its own perplexity more than other languages'.",
        "Share of target languages whose own language has the largest relative PPL change when "
        "their selected neurons are deactivated; holds if > 0.5 and the median own change "
        "exceeds the median of the other languages' mean change, and the interval of "
        "share - 0.5 over resampled evaluation documents is above 0.",
    ),
    "B": (
        "An equal number of random neurons barely moves perplexity "
        "(own-language change of the selection >> random).",
        "Median over targets of the own-language change, selected (value) vs random neurons "
        "averaged over draws (reference); holds if the interval of "
        "value - 2 * max(reference, 0.01) over resampled documents is above 0.",
    ),
    "C": (
        "Perturbing the core region raises perplexity in every language far more than "
        "the opposite end and random.",
        "Smallest core-region change over languages (value) vs largest change of the opposite "
        "end or a random region (reference); holds if in every language "
        "core > 2 * max(opposite, random, 0.01), also for the interval of the smallest such "
        "margin over resampled documents.",
    ),
    "D": (
        "Removing a monolingual region hurts its own language most.",
        "Share of monolingual regions whose own language has the largest change; holds if "
        "the interval of share - 0.5 over resampled documents is above 0.",
    ),
    "E": (
        "Parallel multilingual input inhibits more neurons than monolingual input.",
        "Mean over layers of the inhibited share, parallel input (value) vs the largest "
        "monolingual mean (reference); holds if the interval of the difference over "
        "resampled layers is above 0.",
    ),
    "F": (
        "English has the fewest language-specific neurons.",
        "Selected neurons for en (value) vs the fewest of any other language (reference); "
        "holds if the interval of reference - value over resampled layers is above 0.",
    ),
    "H": (
        "Activating a target language's neurons (and deactivating the source's) steers "
        "generation into the target language more than an equal-size random set.",
        "Mean over steering pairs of the target-language share of the method's best setting "
        "(highest combined score; value) vs the random units at the same setting (reference); "
        "holds if the bootstrap interval of the per-prompt difference is above 0.",
    ),
    "I": (
        "Steering through language neurons beats the DiffMean residual-direction baseline.",
        "Mean over pairs of the target-language share, the method's best setting (value) vs "
        "DiffMean's best (reference), on the same prompts; holds if the bootstrap interval of "
        "the per-prompt difference is above 0.",
    ),
    "J": (
        "Deactivating a language's neurons makes the model stop writing that language.",
        "Share of continuations of source-language prompts still identified as the source "
        "language with its neurons deactivated (value) vs without (reference); holds if the "
        "interval of the per-prompt drop is above 0 and the drop exceeds random units'.",
    ),
    "G": (
        "Language-specific neurons concentrate in the first and last layers.",
        "Selected neurons per layer, summed over languages, in the first N1 and last N2 layers "
        "((N1, N2) = default_stages) (value) vs the middle layers (reference); holds if the "
        "interval of the difference (each group's layers resampled) is above 0.",
    ),
}


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.1f}%"


def _missing(paths: Mapping[str, PathLike | None]) -> str | None:
    """``"not computed: ..."`` naming absent inputs (None or no file), else None."""
    gone = [
        f"{what} not given" if p is None else str(p)
        for what, p in paths.items()
        if p is None or not Path(p).exists()
    ]
    return f"not computed: {', '.join(gone)}" if gone else None


def _mean(x: np.ndarray) -> float:
    """Mean of the finite values, NaN (quietly) without any."""
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _judged(point: bool, lo: float) -> bool | None:
    """A claim holds when its estimate says so and its interval is above 0; without an
    interval it is not judged."""
    return None if math.isnan(lo) else bool(point and lo > 0)


def _margin(margin: np.ndarray, what: str, unit: str) -> tuple[tuple[float, float], str]:
    """The interval of a claim's margin (``margin[0]`` the estimate, ``margin[1:]`` its
    resamples) and its text for the detail."""
    lo, hi = percentile_interval(margin[1:])
    if math.isnan(lo):
        return (lo, hi), ""
    return (lo, hi), f"; {what} {margin[0]:+.3f} [95% CI {lo:+.3f}, {hi:+.3f}] over {unit}"


def _changes(path: PathLike) -> tuple[pd.DataFrame, np.ndarray]:
    """The matrix table and the relative change of every row, ``[rows, 1 + resamples]``:
    the table's own, then under each bootstrap resample of its evaluation language's
    documents (the same resample for every row of a language: paired). A table without
    per-document NLL (made before the intervals) gives only the first column."""
    table = read_parquet(path, MATRIX_COLUMNS[:7], optional=MATRIX_COLUMNS[7:])
    df = table.select(MATRIX_COLUMNS[:7]).to_pandas()
    point = (df["ppl"] / df["base_ppl"] - 1).to_numpy()[:, None]
    if "doc_nll" not in table.column_names:
        return df, point
    nll, tokens = table["doc_nll"].to_pylist(), table["doc_tokens"].to_pylist()
    if any(not docs for docs in nll):
        return df, point
    langs, settings = df["eval_lang"].to_numpy(), df["setting"].to_numpy()
    rng = np.random.default_rng(0)
    out = np.full((len(df), N_RESAMPLES), np.nan)
    for lang in sorted(set(langs)):
        rows = np.flatnonzero(langs == lang)
        base = [k for k, i in enumerate(rows) if settings[i] == "base"]
        sizes = {len(nll[i]) for i in rows}
        if not base or len(sizes) > 1:
            raise ValueError(f"{path}: {lang} has no base row or rows of unequal documents")
        counts = resample_counts(sizes.pop(), rng=rng)  # [resamples, documents]
        n_tok = counts @ np.array(tokens[rows[base[0]]], dtype=float)
        ppl = np.exp(np.array([nll[i] for i in rows]) @ counts.T / n_tok)  # [rows, resamples]
        out[rows] = ppl / ppl[base[0]] - 1
    return df, np.hstack([point, out])


def _cells(df: pd.DataFrame, ch: np.ndarray, setting: str, langs, targets=None) -> np.ndarray:
    """Mean change of the ``setting`` rows (random draws averaged; NaN where none):
    ``[langs, resamples]``, or per target ``[targets, langs, resamples]``."""
    if targets is None:
        return _cells(df.assign(target_lang="*"), ch, setting, langs, ["*"])[0]
    keep = (df["setting"] == setting).to_numpy()
    tgt, ev = df["target_lang"].to_numpy(), df["eval_lang"].to_numpy()
    out = np.full((len(targets), len(langs), ch.shape[1]), np.nan)
    for i, t in enumerate(targets):
        for j, e in enumerate(langs):
            rows = keep & (tgt == t) & (ev == e)
            if rows.any():
                out[i, j] = ch[rows].mean(axis=0)
    return out


def _diagonal(cube: np.ndarray, targets: list[str], langs: list[str]) -> np.ndarray:
    """``[targets, resamples]``: each target's cells in its own evaluation language."""
    return np.stack([cube[i, langs.index(t)] for i, t in enumerate(targets)])


@dataclass
class OwnLanguage:
    """A selection's (or region's) change in its own language vs the others, per target
    (rows) and resample (columns): ``share`` of targets whose own language changes most."""

    targets: list[str]
    point: pd.DataFrame  # target x eval language, the table's own changes
    own: np.ndarray
    others_mean: np.ndarray
    share: np.ndarray

    def misses(self) -> str:
        """``' (not: ja +428.5% < zh +612.0%)'``: each target whose own language is not
        hit hardest, and the language hit harder."""
        parts = []
        for t in self.targets:
            row = self.point.loc[t].drop(t)
            if not self.point.at[t, t] > row.max():
                other = row.idxmax()
                parts.append(f"{t} {_pct(self.point.at[t, t])} < {other} {_pct(row[other])}")
        return f" (not: {', '.join(parts)})" if parts else ""

    def hits(self) -> str:
        return f"{round(self.share[0] * len(self.targets))}/{len(self.targets)}"


def _own_language(df: pd.DataFrame, ch: np.ndarray, setting: str) -> OwnLanguage | None:
    """:class:`OwnLanguage` of the ``setting`` rows with units, None without a target
    that is an evaluation language or with fewer than 2 evaluation languages."""
    rows = df[(df["setting"] == setting) & (df["n_units"] > 0)]
    langs = sorted(rows["eval_lang"].unique())
    targets = sorted(t for t in rows["target_lang"].dropna().unique() if t in langs)
    if not targets or len(langs) < 2:
        return None
    cube = _cells(rows, ch[rows.index.to_numpy()], setting, langs, targets)
    own = _diagonal(cube, targets, langs)
    others = np.stack([np.delete(cube[i], langs.index(t), axis=0) for i, t in enumerate(targets)])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        share = (own > np.nanmax(others, axis=1)).mean(axis=0)
        others_mean = np.nanmean(others, axis=1)
    point = pd.DataFrame(cube[..., 0], index=targets, columns=langs)
    return OwnLanguage(targets, point, own, others_mean, share)


def _neuron_claims(method: str, path: PathLike | None) -> list[dict]:
    """Claims A and B for one method's ablation table (``method`` may carry the
    intervention: ``"plnd (mean)"``), with intervals over the evaluation documents."""
    if skip := _missing({f"{method} ablation": path}):
        return [_row("A", method, detail=skip), _row("B", method, detail=skip)]
    df, ch = _changes(path)
    res = _own_language(df, ch, "selected")
    if res is None:
        skip = f"not computed: {path} has no target with neurons and >= 2 eval languages"
        return [_row("A", method, detail=skip), _row("B", method, detail=skip)]
    own_med, others_med = np.median(res.own, axis=0), np.median(res.others_mean, axis=0)
    rnd = _cells(df, ch, "random", list(res.point.columns), res.targets)
    ci, text = _margin(res.share - 0.5, "share - 0.5", DOCS)
    detail = (
        f"own-language hit hardest for {res.hits()} targets{res.misses()}"
        f"; median own {_pct(own_med[0])} vs others {_pct(others_med[0])}"
        f"; random mean {_pct(_mean(rnd[..., 0]))}" + (text or _no_docs(path))
    )
    point = res.share[0] > 0.5 and own_med[0] > others_med[0]
    rows = [_row("A", method, res.share[0], 0.5, _judged(point, ci[0]), detail, ci, DOCS)]
    rnd_own = _diagonal(rnd, res.targets, list(res.point.columns))
    if np.isnan(rnd_own[:, 0]).all():
        return [*rows, _row("B", method, detail=f"not computed: no random rows in {path}")]
    rnd_med = np.nanmedian(rnd_own, axis=0)
    margin = own_med - 2 * np.maximum(rnd_med, 0.01)
    ci, text = _margin(margin, "selected - 2 x max(random, 1%)", DOCS)
    detail = f"median own change: selected {_pct(own_med[0])} vs random {_pct(rnd_med[0])}"
    holds = _judged(margin[0] > 0, ci[0])
    return [
        *rows,
        _row(
            "B", method, own_med[0], rnd_med[0], holds, detail + (text or _no_docs(path)), ci, DOCS
        ),
    ]


def _no_docs(path: PathLike) -> str:
    return f"; not judged: {path} has no per-document NLL (made before the intervals: rerun it)"


def _region_claims(path: PathLike | None) -> list[dict]:
    """Claims C and D for the region perturbation table, with intervals over the
    evaluation documents."""
    if skip := _missing({"region perturbation": path}):
        return [_row("C", "region", detail=skip), _row("D", "region", detail=skip)]
    score = read_metadata(path).get("score")
    if score not in IMPORTANT_END:
        skip = f"not computed: {path} has no known score in its metadata ({score!r})"
        return [_row("C", "region", detail=skip), _row("D", "region", detail=skip)]
    df, ch = _changes(path)
    core = IMPORTANT_END[score]
    opposite = "top" if core == "bottom" else "bottom"
    langs = sorted(df["eval_lang"].unique())
    ends = {s: _cells(df, ch, s, langs) for s in (core, opposite, "random")}
    present = ~np.isnan(np.stack([e[:, 0] for e in ends.values()])).any(axis=0)
    if not present.any():
        rows = [
            _row("C", "region", detail=f"not computed: no {core}/{opposite}/random rows in {path}")
        ]
    else:
        core_c, opp, rnd = (ends[s][present] for s in (core, opposite, "random"))
        rest = np.maximum(opp, rnd)
        margin = np.min(core_c - 2 * np.maximum(rest, 0.01), axis=0)
        ci, text = _margin(margin, "smallest core - 2 x max(others, 1%)", DOCS)
        n_ok = int((core_c[:, 0] > 2 * np.maximum(rest[:, 0], 0.01)).sum())
        detail = (
            f"core = {core} ({score}); median core {_pct(np.median(core_c[:, 0]))}, "
            f"opposite {_pct(np.median(opp[:, 0]))}, random {_pct(np.median(rnd[:, 0]))}; "
            f"core > 2x the others in {n_ok}/{len(core_c)} languages"
        ) + (text or _no_docs(path))
        holds = _judged(margin[0] > 0, ci[0])
        rows = [_row("C", "region", core_c[:, 0].min(), rest[:, 0].max(), holds, detail, ci, DOCS)]
    res = _own_language(df, ch, "monolingual")
    if res is None:
        return [*rows, _row("D", "region", detail=f"not computed: no monolingual rows in {path}")]
    ci, text = _margin(res.share - 0.5, "share - 0.5", DOCS)
    detail = f"own language hit hardest for {res.hits()} regions{res.misses()}"
    holds = _judged(res.share[0] > 0.5, ci[0])
    detail += text or _no_docs(path)
    return [*rows, _row("D", "region", res.share[0], 0.5, holds, detail, ci, DOCS)]


def _layer_means(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Column means of ``values`` ``[layers, columns]``: ``[1 + resamples, columns]``, the
    table's own and under each bootstrap resample of the layers."""
    counts = resample_counts(len(values), rng=rng)
    return np.vstack([values.mean(axis=0), counts @ values / len(values)])


def _inhibition_claim(paths: Mapping[str, PathLike | None]) -> dict:
    """Claim E: inhibited share under parallel vs monolingual input, interval over layers."""
    mono = [c for c in paths if c != "parallel"]
    skip = _missing({"parallel inhibition": paths.get("parallel"), **{c: paths[c] for c in mono}})
    if skip or not mono:
        return _row("E", "actcount", detail=skip or "not computed: no monolingual inhibition table")
    shares = {
        c: read_parquet(p, ["layer", "inhibited_share"]).to_pandas().set_index("layer")
        for c, p in paths.items()
    }
    conditions = ["parallel", *mono]
    table = pd.concat([shares[c]["inhibited_share"].rename(c) for c in conditions], axis=1)
    means = _layer_means(table.dropna().to_numpy(), np.random.default_rng(0))
    par, top = means[:, 0], means[:, 1:].max(axis=1)
    ci, text = _margin(par - top, "parallel - largest monolingual", LAYERS)
    point = dict(zip(conditions, means[0], strict=True))
    lo, hi = min(mono, key=point.get), max(mono, key=point.get)
    detail = (
        f"parallel {par[0]:.3f} vs monolingual {point[lo]:.3f} ({lo})..{top[0]:.3f} ({hi})" + text
    )
    return _row(
        "E", "actcount", par[0], top[0], _judged(par[0] > top[0], ci[0]), detail, ci, LAYERS
    )


def _selection_claims(method: str, paths: Mapping[str, PathLike | None]) -> list[dict]:
    """Claims F and G for one method's selections, intervals over layers."""
    skip = _missing({f"{method} {lang} selection": p for lang, p in paths.items()})
    if skip or not paths:
        skip = skip or f"not computed: no {method} selection"
        return [_row("F", method, detail=skip), _row("G", method, detail=skip)]
    counts = selection_counts({method: paths}).to_pandas()
    per_layer_lang = counts.pivot_table(
        index="layer", columns="lang", values="n_selected", aggfunc="sum", fill_value=0
    ).sort_index()
    per_lang = per_layer_lang.sum()
    rng = np.random.default_rng(0)
    if "en" not in per_lang or len(per_lang) < 2:
        skip = f"not computed: need en and another language, have {', '.join(per_lang.index)}"
        rows = [_row("F", method, detail=skip)]
    else:
        sums = _layer_means(per_layer_lang.to_numpy(float), rng) * len(per_layer_lang)
        en = sums[:, list(per_lang.index).index("en")]
        others = np.delete(sums, list(per_lang.index).index("en"), axis=1).min(axis=1)
        ci, text = _margin(others - en, "fewest other - en", LAYERS)
        detail = ", ".join(f"{lang} {n}" for lang, n in per_lang.sort_values().items()) + text
        holds = _judged(en[0] < others[0], ci[0])
        rows = [_row("F", method, en[0], others[0], holds, detail, ci, LAYERS)]
    per_layer = per_layer_lang.sum(axis=1).to_numpy(float)
    n_layers = len(per_layer)
    n1, n2 = default_stages(n_layers) if n_layers else (0, 0)
    if n1 + n2 == 0 or n1 + n2 >= n_layers:
        return [*rows, _row("G", method, detail=f"not computed: only {n_layers} layer(s)")]
    first, middle, last = per_layer[:n1], per_layer[n1 : n_layers - n2], per_layer[n_layers - n2 :]
    edge = _layer_means(np.concatenate([first, last])[:, None], rng)[:, 0]
    mid = _layer_means(middle[:, None], rng)[:, 0]
    ci, text = _margin(edge - mid, "first/last - middle per layer", LAYERS)
    detail = (
        f"selected per layer: first {n1} layers {first.sum() / n1:.1f}, "
        f"middle {len(middle)} layers {mid[0]:.1f}"
        + (f", last {n2} layers {last.sum() / n2:.1f}" if n2 else "")
        + text
    )
    return [
        *rows,
        _row("G", method, edge[0], mid[0], _judged(edge[0] > mid[0], ci[0]), detail, ci, LAYERS),
    ]


def _steering_frames(paths: Mapping[tuple[str, str, str], PathLike]) -> dict:
    return {key: read_parquet(p).to_pandas() for key, p in paths.items()}


def _per_prompt(df: pd.DataFrame, setting: str, strength: float, control: str, col: str):
    rows = df[(df["setting"] == setting) & (df["control"] == control)]
    rows = rows[np.isclose(rows["strength"], strength)]
    return rows.groupby("doc_id")[col].mean().astype(float)


def _interval_detail(diff: pd.Series) -> tuple[float, float, str]:
    lo, hi = bootstrap_interval(diff.to_numpy())
    return (
        lo,
        hi,
        f"difference {diff.mean():+.3f} [95% CI {lo:+.3f}, {hi:+.3f}] over {len(diff)} prompts",
    )


def _steering_claims(paths: Mapping[tuple[str, str, str], PathLike] | None) -> list[dict]:
    """Claims H, I and J for each neuron method, from the per-prompt steering tables."""
    methods = ("plnd", "lape", "actcount")
    if not paths:
        skip = "not computed: no steering tables (steering.pairs empty?)"
        return [_row(c, m, detail=skip) for m in methods for c in ("H", "I", "J")]
    frames = _steering_frames(paths)
    best = best_settings(summarize(frames)).set_index(["method", "source", "target"])
    rows = []
    for m in methods:
        keys = [k for k in frames if k[0] == m]
        if not keys:
            skip = f"not computed: no {m} steering table"
            rows += [_row(c, m, detail=skip) for c in ("H", "I", "J")]
            continue
        sel, rnd, dm, still_none, still_off, still_rnd = [], [], [], [], [], []
        for key in keys:
            df, b = frames[key], best.loc[key]
            sel.append(_per_prompt(df, b["setting"], b["strength"], "selected", "lang_success"))
            rnd.append(_per_prompt(df, b["setting"], b["strength"], "random", "lang_success"))
            dkey = ("diffmean", key[1], key[2])
            if dkey in frames:
                d = best.loc[dkey]
                dm.append(
                    _per_prompt(frames[dkey], "steer", d["strength"], "selected", "lang_success")
                )
            still_none.append(_per_prompt(df, "none", 0.0, "none", "still_source"))
            still_off.append(_per_prompt(df, "deactivate", 0.0, "selected", "still_source"))
            still_rnd.append(_per_prompt(df, "deactivate", 0.0, "random", "still_source"))
        pairs = ", ".join(f"{s}->{t}" for _, s, t in keys)
        s_all, r_all = pd.concat(sel, ignore_index=True), pd.concat(rnd, ignore_index=True)
        diff = s_all - r_all
        lo, hi, text = _interval_detail(diff)
        settings = ", ".join(f"{best.loc[k, 'setting']} x{best.loc[k, 'strength']:g}" for k in keys)
        detail = f"pairs {pairs}; best settings {settings}; selected - random {text}"
        rows.append(_row("H", m, s_all.mean(), r_all.mean(), bool(lo > 0), detail, (lo, hi)))
        if len(dm) == len(sel):
            d_all = pd.concat(dm, ignore_index=True)
            lo, hi, text = _interval_detail(s_all - d_all)
            detail = f"pairs {pairs}; {m} - DiffMean {text}"
            rows.append(_row("I", m, s_all.mean(), d_all.mean(), bool(lo > 0), detail, (lo, hi)))
        else:
            rows.append(_row("I", m, detail="not computed: DiffMean not run on every pair"))
        n_all, o_all = (
            pd.concat(still_none, ignore_index=True),
            pd.concat(still_off, ignore_index=True),
        )
        rr = pd.concat(still_rnd, ignore_index=True)
        lo, hi, text = _interval_detail(n_all - o_all)
        holds = bool(lo > 0 and (n_all - o_all).mean() > (n_all - rr).mean())
        detail = (
            f"pairs {pairs}; still source: none {n_all.mean():.2f}, deactivated "
            f"{o_all.mean():.2f}, random units {rr.mean():.2f}; drop {text}"
        )
        rows.append(_row("J", m, o_all.mean(), n_all.mean(), holds, detail, (lo, hi)))
    return rows


def _row(
    cid, method, value=math.nan, reference=math.nan, holds=None, detail="", ci=None, unit=PROMPTS
) -> dict:
    """One claim's row; ``ci``: the ``(low, high)`` bootstrap interval it is judged by,
    from resamples of ``unit``."""
    claim, measure = CLAIMS[cid]
    lo, hi = ci if ci is not None else (math.nan, math.nan)
    has_ci = not (math.isnan(lo) or math.isnan(hi))
    return {
        "ci_low": float(lo),
        "ci_high": float(hi),
        "interval": f"{N_RESAMPLES} bootstrap resamples of {unit}, seed 0" if has_ci else "",
        "claim_id": cid,
        "claim": claim,
        "source": SOURCES[method.split(" ")[0]],
        "method": method,
        "measure": measure,
        "value": float(value),
        "reference": float(reference),
        "holds": None if holds is None else bool(holds),
        "detail": detail,
    }


def findings_table(
    ablation: Mapping[str, PathLike | None],
    region: PathLike | None,
    inhibition: Mapping[str, PathLike | None],
    selections: Mapping[str, Mapping[str, PathLike | None]],
    model: str,
    steering: Mapping[tuple[str, str, str], PathLike] | None = None,
    interventions: Mapping[str, Mapping[str, PathLike | None]] | None = None,
    tasks: Mapping[str, Sequence[PathLike]] | None = None,
    stage_method: str = "plnd",
    finetune: PathLike | None = None,
) -> pd.DataFrame:
    """One row per claim (and method) with measured value, reference and whether it holds.

    ``ablation[method]``: neuron ablation table (zeroed); ``region``: region perturbation
    table; ``inhibition[condition]``: actcount inhibition tables (language codes and
    ``parallel``); ``selections[method][lang]``: selection tables. 13 rows: A, B per
    plnd/lape/actcount, C, D, E, F and G per plnd/lape; with ``steering``
    (``(method, source, target) -> steering table``) H, I, J per plnd/lape/actcount;
    with ``interventions[name][method]`` (ablation tables under ``mean`` / ``scale``)
    A and B again per method, labelled ``"plnd (mean)"``; with ``tasks`` (``"pim"`` and
    ``"stages"``: per-item task evaluation files) K, L per PiM task and M, N, O
    (:mod:`workflow_scripts.tasks.claims`); with ``finetune`` (the collected fine-tuning
    table) P-T (:mod:`workflow_scripts.training.claims`).
    """
    rows = [r for m in ("plnd", "lape", "actcount") for r in _neuron_claims(m, ablation.get(m))]
    for name, tables in (interventions or {}).items():
        rows += [r for m, p in tables.items() for r in _neuron_claims(f"{m} ({name})", p)]
    if steering is not None:
        rows += _steering_claims(steering)
    rows += [*_region_claims(region), _inhibition_claim(inhibition)]
    rows += [r for m in ("plnd", "lape") for r in _selection_claims(m, selections.get(m, {}))]
    if tasks is not None:
        rows += pim_claims(tasks.get("pim", [])) + stage_claims(
            tasks.get("stages", []), stage_method
        )
    if finetune is not None:
        rows += finetune_claims(read_parquet(finetune).to_pandas())
    table = pd.DataFrame(rows).assign(model=model).reindex(columns=COLUMNS + INTERVAL_COLUMNS)
    table["interval"] = table["interval"].fillna("")
    table = table.sort_values("claim_id", kind="stable", ignore_index=True)
    types = {"holds": "boolean", "value": "float64", "reference": "float64"}
    return table.astype({**types, "ci_low": "float64", "ci_high": "float64"})


def write_findings(table: pd.DataFrame, csv_path: PathLike, parquet_path: PathLike) -> None:
    """Write the findings table as CSV and Parquet, each atomically."""
    write_frame(table, csv_path, parquet_path)

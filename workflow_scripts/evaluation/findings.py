"""The findings table: one row per claim of the seed papers, measured on one model.

Each row gives the measured ``value``, the ``reference`` it is compared against and
whether the claim ``holds``. A missing input leaves its claims uncomputed (``holds``
null, ``detail`` "not computed: ..."); no number is ever filled in.
Relative perplexity change is ``ppl / base_ppl - 1`` throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.ablation import MATRIX_COLUMNS
from workflow_scripts.evaluation.bootstrap import N_RESAMPLES, bootstrap_interval
from workflow_scripts.evaluation.steering import best_settings, summarize
from workflow_scripts.io import read_metadata, read_parquet, write_frame
from workflow_scripts.neurons.summary import default_stages, selection_counts
from workflow_scripts.regions.scores import IMPORTANT_END
from workflow_scripts.tasks.claims import pim_claims, stage_claims

PathLike = str | Path
COLUMNS = ["model", "claim_id", "claim", "source", "method", "measure"]
COLUMNS += ["value", "reference", "holds", "detail"]
INTERVAL_COLUMNS = ["ci_low", "ci_high", "interval"]  # the 95% interval the claim is judged by
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
        "exceeds the median of the other languages' mean change.",
    ),
    "B": (
        "An equal number of random neurons barely moves perplexity "
        "(own-language change of the selection >> random).",
        "Median over targets of the own-language change, selected (value) vs random neurons "
        "averaged over draws (reference); holds if value > 2 * max(reference, 0.01).",
    ),
    "C": (
        "Perturbing the core region raises perplexity in every language far more than "
        "the opposite end and random.",
        "Smallest core-region change over languages (value) vs largest change of the opposite "
        "end or a random region (reference); holds if in every language "
        "core > 2 * max(opposite, random, 0.01).",
    ),
    "D": (
        "Removing a monolingual region hurts its own language most.",
        "Share of monolingual regions whose own language has the largest change; holds if > 0.5.",
    ),
    "E": (
        "Parallel multilingual input inhibits more neurons than monolingual input.",
        "Mean over layers of the inhibited share, parallel input (value) vs the largest "
        "monolingual mean (reference); holds if value > reference.",
    ),
    "F": (
        "English has the fewest language-specific neurons.",
        "Selected neurons for en (value) vs the fewest of any other language (reference); "
        "holds if value < reference.",
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
        "((N1, N2) = default_stages) (value) vs the middle layers (reference); "
        "holds if value > reference.",
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


def _changes(path: PathLike) -> pd.DataFrame:
    df = read_parquet(path, MATRIX_COLUMNS).to_pandas()
    return df.assign(change=df["ppl"] / df["base_ppl"] - 1)


def _matrix(df: pd.DataFrame, setting: str, targets: list[str] | None = None) -> pd.DataFrame:
    """Target x eval language mean change (random draws averaged)."""
    rows = df[df["setting"] == setting]
    m = rows.pivot_table(index="target_lang", columns="eval_lang", values="change", aggfunc="mean")
    return m.reindex(index=targets) if targets is not None else m


def _own_hardest(m: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(targets that are also eval languages, those whose own language is *not* hit hardest)."""
    targets = [t for t in m.index if t in m.columns]
    return targets, [t for t in targets if not m.at[t, t] > m.loc[t].drop(t).max()]


def _misses(m: pd.DataFrame, misses: list[str]) -> str:
    """``'ja +428.5% < zh +612.0%'``: each miss's own change and the language hit harder."""
    parts = []
    for t in misses:
        other = m.loc[t].drop(t).idxmax()
        parts.append(f"{t} {_pct(m.at[t, t])} < {other} {_pct(m.at[t, other])}")
    return f" (not: {', '.join(parts)})" if parts else ""


def _own(m: pd.DataFrame, targets: list[str]) -> pd.Series:
    return pd.Series([m.at[t, t] if t in m.columns else math.nan for t in targets], targets)


def _neuron_claims(method: str, path: PathLike | None) -> list[dict]:
    """Claims A and B for one method's ablation table (``method`` may carry the
    intervention: ``"plnd (mean)"``)."""
    if skip := _missing({f"{method} ablation": path}):
        return [_row("A", method, detail=skip), _row("B", method, detail=skip)]
    df = _changes(path)
    selected = df[df["n_units"] > 0]
    m = _matrix(selected, "selected")
    targets, misses = _own_hardest(m)
    if not targets or m.shape[1] < 2:
        skip = f"not computed: {path} has no target with neurons and >= 2 eval languages"
        return [_row("A", method, detail=skip), _row("B", method, detail=skip)]
    m = m.loc[targets]
    own = _own(m, targets)
    others = pd.Series([m.loc[t].drop(t).mean() for t in targets], targets)
    rnd = _matrix(df, "random", targets)
    share = 1 - len(misses) / len(targets)
    holds = bool(share > 0.5 and own.median() > others.median())
    detail = (
        f"own-language hit hardest for {len(targets) - len(misses)}/{len(targets)} targets"
        + _misses(m, misses)
        + f"; median own {_pct(own.median())} vs others {_pct(others.median())}"
        + f"; random mean {_pct(rnd.stack().mean())}"
    )
    rows = [_row("A", method, share, 0.5, holds, detail)]
    rnd_own = _own(rnd, targets).median()
    if math.isnan(rnd_own):
        return [*rows, _row("B", method, detail=f"not computed: no random rows in {path}")]
    holds = bool(own.median() > 2 * max(rnd_own, 0.01))
    detail = f"median own change: selected {_pct(own.median())} vs random {_pct(rnd_own)}"
    return [*rows, _row("B", method, own.median(), rnd_own, holds, detail)]


def _region_claims(path: PathLike | None) -> list[dict]:
    """Claims C and D for the region perturbation table."""
    if skip := _missing({"region perturbation": path}):
        return [_row("C", "region", detail=skip), _row("D", "region", detail=skip)]
    score = read_metadata(path).get("score")
    if score not in IMPORTANT_END:
        skip = f"not computed: {path} has no known score in its metadata ({score!r})"
        return [_row("C", "region", detail=skip), _row("D", "region", detail=skip)]
    df = _changes(path)
    core = IMPORTANT_END[score]
    opposite = "top" if core == "bottom" else "bottom"
    ends = {
        s: df[df["setting"] == s].groupby("eval_lang")["change"].mean()
        for s in (core, opposite, "random")
    }
    frame = pd.DataFrame(ends).dropna()
    if frame.empty:
        skip = f"not computed: no {core}/{opposite}/random rows in {path}"
        rows = [_row("C", "region", detail=skip)]
    else:
        rest = frame[[opposite, "random"]].max(axis=1)
        ok = frame[core] > 2 * rest.clip(lower=0.01)
        detail = (
            f"core = {core} ({score}); median core {_pct(frame[core].median())}, "
            f"opposite {_pct(frame[opposite].median())}, random {_pct(frame['random'].median())}; "
            f"core > 2x the others in {int(ok.sum())}/{len(ok)} languages"
        )
        rows = [_row("C", "region", frame[core].min(), rest.max(), bool(ok.all()), detail)]
    m = _matrix(df[df["n_units"] > 0], "monolingual")
    targets, misses = _own_hardest(m)
    if not targets or m.shape[1] < 2:
        return [*rows, _row("D", "region", detail=f"not computed: no monolingual rows in {path}")]
    share = 1 - len(misses) / len(targets)
    detail = f"own language hit hardest for {len(targets) - len(misses)}/{len(targets)} regions"
    detail += _misses(m, misses)
    return [*rows, _row("D", "region", share, 0.5, share > 0.5, detail)]


def _inhibition_claim(paths: Mapping[str, PathLike | None]) -> dict:
    """Claim E: inhibited share under parallel vs monolingual input."""
    mono = [c for c in paths if c != "parallel"]
    skip = _missing({"parallel inhibition": paths.get("parallel"), **{c: paths[c] for c in mono}})
    if skip or not mono:
        return _row("E", "actcount", detail=skip or "not computed: no monolingual inhibition table")
    means = {
        c: float(read_parquet(p, ["layer", "inhibited_share"])["inhibited_share"].to_numpy().mean())
        for c, p in paths.items()
    }
    lo, hi = min(mono, key=means.get), max(mono, key=means.get)
    value, ref = means["parallel"], means[hi]
    detail = f"parallel {value:.3f} vs monolingual {means[lo]:.3f} ({lo})..{ref:.3f} ({hi})"
    return _row("E", "actcount", value, ref, value > ref, detail)


def _selection_claims(method: str, paths: Mapping[str, PathLike | None]) -> list[dict]:
    """Claims F and G for one method's selections."""
    skip = _missing({f"{method} {lang} selection": p for lang, p in paths.items()})
    if skip or not paths:
        skip = skip or f"not computed: no {method} selection"
        return [_row("F", method, detail=skip), _row("G", method, detail=skip)]
    counts = selection_counts({method: paths}).to_pandas()
    per_lang = counts.groupby("lang")["n_selected"].sum()
    others = per_lang.drop("en", errors="ignore")
    if "en" not in per_lang or others.empty:
        skip = f"not computed: need en and another language, have {', '.join(per_lang.index)}"
        rows = [_row("F", method, detail=skip)]
    else:
        detail = ", ".join(f"{lang} {n}" for lang, n in per_lang.sort_values().items())
        en, ref = float(per_lang["en"]), float(others.min())
        rows = [_row("F", method, en, ref, en < ref, detail)]
    per_layer = counts.groupby("layer")["n_selected"].sum().sort_index().to_numpy()
    n_layers = len(per_layer)
    n1, n2 = default_stages(n_layers) if n_layers else (0, 0)
    if n1 + n2 == 0:
        return [*rows, _row("G", method, detail=f"not computed: only {n_layers} layer(s)")]
    first, middle, last = per_layer[:n1], per_layer[n1 : n_layers - n2], per_layer[n_layers - n2 :]
    value = (first.sum() + last.sum()) / (n1 + n2)
    ref = middle.sum() / len(middle)
    detail = (
        f"selected per layer: first {n1} layers {first.sum() / n1:.1f}, "
        f"middle {len(middle)} layers {ref:.1f}"
        + (f", last {n2} layers {last.sum() / n2:.1f}" if n2 else "")
    )
    return [*rows, _row("G", method, float(value), float(ref), value > ref, detail)]


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


def _row(cid, method, value=math.nan, reference=math.nan, holds=None, detail="", ci=None) -> dict:
    """One claim's row; ``ci``: the ``(low, high)`` bootstrap interval it is judged by."""
    claim, measure = CLAIMS[cid]
    lo, hi = ci if ci is not None else (math.nan, math.nan)
    return {
        "ci_low": float(lo),
        "ci_high": float(hi),
        "interval": f"{N_RESAMPLES} bootstrap resamples of prompts, seed 0" if ci else "",
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
    (:mod:`workflow_scripts.tasks.claims`).
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
    table = pd.DataFrame(rows).assign(model=model).reindex(columns=COLUMNS + INTERVAL_COLUMNS)
    table["interval"] = table["interval"].fillna("")
    table = table.sort_values("claim_id", kind="stable", ignore_index=True)
    types = {"holds": "boolean", "value": "float64", "reference": "float64"}
    return table.astype({**types, "ci_low": "float64", "ci_high": "float64"})


def write_findings(table: pd.DataFrame, csv_path: PathLike, parquet_path: PathLike) -> None:
    """Write the findings table as CSV and Parquet, each atomically."""
    write_frame(table, csv_path, parquet_path)

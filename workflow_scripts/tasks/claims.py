"""The findings rows of the task experiments (claims K-O), from the per-item evaluation
files, each with a seeded bootstrap interval over items (docs/methods.md, "Task
evaluation"). A claim holds only when its interval excludes 0.

- K, L (Mu et al.): PiM minus monolingual, per item: the task score (K) and the
  inhibited share during the generations (L), items of every subset of a task pooled;
- M, N, O (Zhao et al.): per item, the score drop of a language's neurons deactivated in
  one cell beyond the random control's drop (``drop = base - ablated``; corrected drop =
  drop(selected) - drop(random) = random - selected), items of every language pooled:
  M: understanding layers, the language's task minus the English task; N: task-solving
  layers, FFN minus attention, in the language; O: generation layers, the language
  minus English.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workflow_scripts.evaluation.bootstrap import N_RESAMPLES, bootstrap_interval
from workflow_scripts.tasks.summary import eval_frames, item_scores

PathLike = str | Path
MU, ZHAO = "Mu et al. 2024", "Zhao et al. 2024 (PLND)"
INTERVAL = f"{N_RESAMPLES} bootstrap resamples of items, seed 0"
TASK_CLAIMS = {  # claim_id -> (claim, measure, source)
    "K": (
        "Parallel multilingual input (the source plus its translations) improves the task "
        "over the monolingual input.",
        "Mean per-item score with PiM (value) vs monolingual (reference), items of every "
        "subset pooled; holds if the interval of the per-item difference is above 0.",
        MU,
    ),
    "L": (
        "Parallel multilingual input inhibits more neurons during the task.",
        "Mean inhibited MLP share during the generations with PiM (value) vs monolingual "
        "(reference), per item; holds if the interval of the per-item difference is above 0.",
        MU,
    ),
    "M": (
        "Deactivating a language's neurons in the understanding layers hurts that "
        "language's task but not English's.",
        "Score drop beyond the random control's, understanding layers: in the language "
        "(value) vs English (reference); holds if the interval of the per-item difference "
        "is above 0.",
        ZHAO,
    ),
    "N": (
        "In the task-solving layers the FFN neurons carry the language more than the "
        "attention neurons.",
        "Score drop beyond the random control's in the language, task-solving layers: FFN "
        "(value) vs attention (reference); holds if the interval of the per-item "
        "difference is above 0.",
        ZHAO,
    ),
    "O": (
        "Deactivating a language's neurons in the generation layers hurts producing that "
        "language more than English.",
        "Score drop beyond the random control's, generation layers: in the language "
        "(value) vs English (reference); holds if the interval of the per-item difference "
        "is above 0.",
        ZHAO,
    ),
}


def _row(cid, method, value=math.nan, reference=math.nan, diff=None, detail="") -> dict:
    claim, measure, source = TASK_CLAIMS[cid]
    lo = hi = math.nan
    holds = None
    if diff is not None and len(diff):
        lo, hi = bootstrap_interval(diff.to_numpy())
        holds = bool(lo > 0)
        detail += (
            f"; difference {diff.mean():+.3f} [95% CI {lo:+.3f}, {hi:+.3f}], {len(diff)} items"
        )
    return {
        "claim_id": cid,
        "claim": claim,
        "source": source,
        "method": method,
        "measure": measure,
        "value": float(value),
        "reference": float(reference),
        "holds": holds,
        "detail": detail,
        "ci_low": lo,
        "ci_high": hi,
        "interval": INTERVAL if holds is not None else "",
    }


def _paired(df: pd.DataFrame, a: str, b: str, col: str) -> pd.DataFrame:
    """Per (subset, id): ``col`` under condition ``a`` and ``b``."""
    wide = df.pivot_table(index=["subset", "id"], columns="condition", values=col)
    return wide[[a, b]].dropna()


def pim_claims(paths: Sequence[PathLike]) -> list[dict]:
    """Claims K and L for every PiM task among the evaluation files."""
    if not paths:
        skip = "not computed: no PiM evaluation (pim.tasks or pim.directions empty)"
        return [_row("K", "pim", detail=skip), _row("L", "pim", detail=skip)]
    df = eval_frames(paths)
    rows = []
    for task, part in df.groupby("task"):
        method = f"pim ({task})"
        conditions = set(part["condition"])
        if not {"pim", "monolingual"} <= conditions:
            skip = "not computed: needs the pim and monolingual conditions"
            rows += [_row("K", method, detail=skip), _row("L", method, detail=skip)]
            continue
        metric = part["metric"].iloc[0]
        s = _paired(part, "pim", "monolingual", "score")
        per = (s["pim"] - s["monolingual"]).groupby(level="subset").mean()
        detail = f"{metric}: " + ", ".join(f"{k} {v:+.2f}" for k, v in per.items())
        if "repeat" in conditions:
            r = _paired(part, "pim", "repeat", "score")
            detail += f"; pim - repeat (length control) {(r['pim'] - r['repeat']).mean():+.2f}"
        diff = s["pim"] - s["monolingual"]
        rows.append(_row("K", method, s["pim"].mean(), s["monolingual"].mean(), diff, detail))
        inh = _paired(part, "pim", "monolingual", "inhibited_share")
        if inh.empty:
            rows.append(
                _row("L", method, detail="not computed: no inhibited shares (choice task?)")
            )
            continue
        diff = inh["pim"] - inh["monolingual"]
        detail = f"inhibited share: pim {inh['pim'].mean():.4f} vs monolingual {inh['monolingual'].mean():.4f}"
        rows.append(_row("L", method, inh["pim"].mean(), inh["monolingual"].mean(), diff, detail))
    return rows


def _corrected_drops(df: pd.DataFrame, cell: str) -> pd.DataFrame:
    """Per (language, eval language, id): random minus selected score in ``cell``."""
    out = []
    for (lang, ev), part in df[df["cell"] == cell].groupby(["subset", "eval_lang"]):
        d = (item_scores(part, "random") - item_scores(part, "selected")).dropna()
        out.append(
            pd.DataFrame({"lang": lang, "eval_lang": ev, "id": d.index, "drop": d.to_numpy()})
        )
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _lang_vs_en(drops: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    own = drops[drops["lang"] == drops["eval_lang"]].set_index(["lang", "id"])["drop"]
    en = drops[drops["eval_lang"] == "en"].set_index(["lang", "id"])["drop"]
    both = pd.concat({"own": own, "en": en}, axis=1).dropna()
    return both["own"], both["en"]


def stage_claims(paths: Sequence[PathLike], method: str = "plnd") -> list[dict]:
    """Claims M, N and O from the layer-stage files (every task pooled per claim)."""
    if not paths:
        skip = "not computed: no layer-stage evaluation (layer_stages.tasks or languages empty)"
        return [_row(c, method, detail=skip) for c in ("M", "N", "O")]
    df = eval_frames(paths)
    df = df.assign(cell=df["condition"].str.removeprefix("stage-"))
    label = f"{method} ({', '.join(sorted(set(df['task'])))})"
    langs = ", ".join(sorted(set(df["subset"])))
    rows = []
    for cid, cell in (("M", "understanding"), ("O", "generation")):
        drops = _corrected_drops(df, cell)
        if drops.empty or "random" not in set(df["control"]):
            rows.append(
                _row(cid, label, detail=f"not computed: no {cell} cell with a random control")
            )
            continue
        own, en = _lang_vs_en(drops)
        detail = f"{cell} layers, languages {langs}: drop {own.mean():+.3f} in the language, {en.mean():+.3f} in English"
        rows.append(_row(cid, label, own.mean(), en.mean(), own - en, detail))
    ffn, attn = _corrected_drops(df, "task_ffn"), _corrected_drops(df, "task_attention")
    if ffn.empty or attn.empty:
        rows.append(
            _row("N", label, detail="not computed: needs the task_ffn and task_attention cells")
        )
    else:
        f = ffn[ffn["lang"] == ffn["eval_lang"]].set_index(["lang", "id"])["drop"]
        a = attn[attn["lang"] == attn["eval_lang"]].set_index(["lang", "id"])["drop"]
        both = pd.concat({"ffn": f, "attn": a}, axis=1).dropna()
        detail = f"task-solving layers, languages {langs}: FFN {both['ffn'].mean():+.3f}, attention {both['attn'].mean():+.3f}"
        rows.append(
            _row(
                "N",
                label,
                both["ffn"].mean(),
                both["attn"].mean(),
                both["ffn"] - both["attn"],
                detail,
            )
        )
    return rows

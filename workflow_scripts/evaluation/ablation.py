"""Ablation of selected neurons and its evaluation by perplexity (docs/methods.md, "Ablation").

A unit is ``(layer, module, index)`` as in the selection tables
(:mod:`workflow_scripts.units`); what deactivating (or any other intervention on) it
means is in :mod:`workflow_scripts.evaluation.interventions`. :func:`ablation_matrix`
evaluates every target language's selection, and equal-count random selections of the
same (layer, module) strata, in every evaluation language, under one intervention
(``zero`` by default, or ``scale`` / ``mean`` / ``set``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
from torch import nn

from workflow_scripts.evaluation.interventions import (
    MODES,
    Intervention,
    Unit,
    as_unit,
    deactivated,
    intervened,
    validate_units,
)
from workflow_scripts.evaluation.perplexity import PerplexityResult, perplexity
from workflow_scripts.models.anatomy import ExpertSite, attention_sites, ffn_sites, layer_modules
from workflow_scripts.units import ATTENTION, DENSE_MODULES, EXPERT, family, unknown_modules

log = logging.getLogger(__name__)

__all__ = ["MODES", "Intervention", "deactivated", "intervened"]  # re-exported
SETTINGS = ("base", "selected", "random")
# what the perplexity matrix accepts (set needs a second language: the steering experiment)
ABLATION_INTERVENTIONS = ("zero", "scale", "mean")
# a row of the perplexity matrix (ablation and region perturbation); doc_nll / doc_tokens:
# per evaluated document (the findings' bootstrap over documents resamples them)
MATRIX_SCHEMA = pa.schema(
    [
        ("setting", pa.string()),
        ("target_lang", pa.string()),
        ("eval_lang", pa.string()),
        ("n_units", pa.int64()),
        ("ppl", pa.float64()),
        ("base_ppl", pa.float64()),
        ("seed", pa.int64()),
        ("doc_nll", pa.list_(pa.float64())),
        ("doc_tokens", pa.list_(pa.int64())),
    ]
)
MATRIX_COLUMNS = MATRIX_SCHEMA.names


class MatrixRows:
    """Accumulates perplexity-matrix rows; :meth:`table` gives the ``MATRIX_SCHEMA`` table."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(
        self,
        setting: str,
        target: str | None,
        lang: str,
        n_units: int,
        result: PerplexityResult,
        base: PerplexityResult,
        seed: int = -1,
    ) -> None:
        self.rows.append(
            {
                "setting": setting,
                "target_lang": target,
                "eval_lang": lang,
                "n_units": n_units,
                "ppl": result.ppl,
                "base_ppl": base.ppl,
                "seed": seed,
                "doc_nll": list(result.doc_nll),
                "doc_tokens": list(result.doc_tokens),
            }
        )

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=MATRIX_SCHEMA)


def base_results(table: pa.Table) -> dict[str, PerplexityResult]:
    """``eval_lang -> PerplexityResult`` of the ``base`` rows of a perplexity-matrix table
    (a base job's output), per document as measured."""
    out = {}
    for row in table.to_pylist():
        if row["setting"] == "base":
            nll, tokens = tuple(row["doc_nll"] or ()), tuple(row["doc_tokens"] or ())
            out[row["eval_lang"]] = PerplexityResult(
                row["ppl"], math.fsum(nll), sum(tokens), nll, tokens
            )
    return out


def base_perplexities(
    model: nn.Module,
    tokenizer,
    eval_texts: Mapping[str, Sequence[str]],
    base: Mapping[str, PerplexityResult] | None = None,
    **ppl_kwargs,
) -> dict[str, PerplexityResult]:
    """The unablated perplexity of every evaluation language: from ``base`` (the base
    jobs' results, computed once per model and language) where given, else computed."""
    out = {}
    for lang, texts in eval_texts.items():
        if base is not None and lang in base:
            out[lang] = base[lang]
        else:
            out[lang] = perplexity(model, tokenizer, texts, **ppl_kwargs)
        log.info("ablation: base PPL %s = %.4g", lang, out[lang].ppl)
    return out


def base_table(base: Mapping[str, PerplexityResult]) -> pa.Table:
    """The ``base`` rows of a perplexity matrix (what a base job writes)."""
    rows = MatrixRows()
    for lang, result in base.items():
        rows.add("base", None, lang, 0, result, result)
    return rows.table()


# ---------------------------------------------------------------------- unit sets


def units_from_table(table: pa.Table) -> list[Unit]:
    """The selected units ``(layer, module, index)`` of a selection table, in table order."""
    cols = [table[c].to_pylist() for c in ("layer", "module", "index", "selected")]
    return [(int(la), str(m), int(i)) for la, m, i, s in zip(*cols, strict=True) if s]


def all_units(model: nn.Module, modules: Iterable[str] = DENSE_MODULES) -> list[Unit]:
    """Every unit of ``model`` of the given modules (the candidates of random selections).

    ``mlp`` means every MLP neuron: a dense layer's, or in a mixture-of-experts layer
    every expert's (``mlp.e<j>``, ``mlp.shared``); ``mlp.e<j>`` / ``mlp.shared`` name
    one expert's; ``expert`` the routed experts themselves.
    """
    modules = list(dict.fromkeys(modules))
    unknown = unknown_modules(modules)
    if unknown:
        raise ValueError(f"all_units: unknown modules {unknown} (workflow_scripts/units.py)")
    units: list[Unit] = []
    if any(family(m) == "mlp" or m == EXPERT for m in modules):
        sites = ffn_sites(model)
        for site, groups in zip(sites, layer_modules(sites), strict=True):
            for name, width in groups:
                if name in modules or "mlp" in modules:
                    units += [(site.layer, name, i) for i in range(width)]
            if EXPERT in modules and isinstance(site, ExpertSite):
                units += [(site.layer, EXPERT, j) for j in range(site.n_experts)]
    attn = [m for m in modules if m in ATTENTION]
    if attn:
        for s in attention_sites(model):
            units += [(s.layer, m, i) for m in attn for i in range(s.size(m))]
    return units


def random_like(selection: Iterable[Unit], candidates: Iterable[Unit], seed: int) -> list[Unit]:
    """An equal-count random set drawn from the same (layer, module) strata as ``selection``.

    For each (layer, module) of the selection with n distinct units, n units are drawn
    uniformly without replacement from the candidates of that stratum (the selected
    units themselves may be drawn: nothing else is excluded). Strata are visited in
    sorted order and candidates sorted, with one ``numpy.random.default_rng(seed)``,
    so the result depends only on the two sets and the seed. Returned sorted.
    """
    need: dict[tuple[int, str], int] = {}
    for layer, module, _ in set(selection):
        need[(layer, module)] = need.get((layer, module), 0) + 1
    pool: dict[tuple[int, str], set[int]] = {}
    for layer, module, index in candidates:
        pool.setdefault((layer, module), set()).add(index)
    rng = np.random.default_rng(seed)
    out: list[Unit] = []
    for key in sorted(need):
        cands = sorted(pool.get(key, ()))
        if len(cands) < need[key]:
            raise ValueError(
                f"random_like: stratum {key} has {len(cands)} candidates, {need[key]} needed"
            )
        picks = rng.choice(len(cands), size=need[key], replace=False)
        out += [(key[0], key[1], cands[j]) for j in picks]
    return sorted(out)


# ------------------------------------------------------------------ ablation matrix


def ablation_matrix(
    model: nn.Module,
    tokenizer,
    selections: Mapping[str, Sequence[Unit]],
    eval_texts: Mapping[str, Sequence[str]],
    n_random: int = 3,
    seed: int = 0,
    mode: str = "hooks",
    intervention: Intervention | None = None,
    values: Mapping[Unit, float] | None = None,
    base: Mapping[str, PerplexityResult] | None = None,
    **ppl_kwargs,
) -> pa.Table:
    """Perplexity of every (target language's ablation, evaluation language) pair.

    Rows (columns ``MATRIX_COLUMNS``): per evaluation language one ``base`` row
    (target_lang null, n_units 0); per target language and evaluation language one
    ``selected`` row and ``n_random`` ``random`` rows (seeds ``seed, seed+1, ...``,
    :func:`random_like`); ``seed`` is -1 for non-random rows. The base perplexity is
    taken from ``base`` (the base jobs') or computed once per evaluation language. An empty selection gives rows with n_units 0
    and ppl = base_ppl (and a warning). ``intervention`` (default ``zero``) is applied to
    the selected and the random units alike, with ``values`` for ``mean``
    (:func:`~workflow_scripts.evaluation.interventions.intervened`). ``ppl_kwargs`` go to
    :func:`perplexity`.
    """
    intervention = intervention or Intervention("zero")
    if intervention.kind not in ABLATION_INTERVENTIONS:
        raise ValueError(
            f"ablation: intervention {intervention.kind!r} is not one of {ABLATION_INTERVENTIONS}"
        )
    empty = [lang for lang, texts in eval_texts.items() if not texts]
    if empty or not eval_texts:
        raise ValueError(f"ablation: evaluation languages without texts: {empty or 'all'}")
    selections = {t: sorted({as_unit(u) for u in units}) for t, units in selections.items()}
    for units in selections.values():  # validate every unit before computing anything
        validate_units(model, units)
    rows = MatrixRows()
    base = base_perplexities(model, tokenizer, eval_texts, base, **ppl_kwargs)
    for lang, result in base.items():
        rows.add("base", None, lang, 0, result, result)
    used = sorted({m for units in selections.values() for _, m, _ in units})
    candidates = all_units(model, used) if used and n_random > 0 else []
    for target, units in selections.items():
        settings = [("selected", units, -1)]
        settings += [
            ("random", random_like(units, candidates, seed + r) if units else [], seed + r)
            for r in range(n_random)
        ]
        if not units:
            log.warning("ablation: the selection of %r is empty; its rows repeat the base", target)
        for setting, chosen, row_seed in settings:
            if not chosen:
                for lang in eval_texts:
                    rows.add(setting, target, lang, 0, base[lang], base[lang], row_seed)
                continue
            with intervened(model, chosen, intervention, values, mode):
                for lang, texts in eval_texts.items():
                    result = perplexity(model, tokenizer, texts, **ppl_kwargs)
                    rows.add(setting, target, lang, len(chosen), result, base[lang], row_seed)
                    log.info(
                        "ablation: %s %s (seed %d) on %s: PPL %.4g (base %.4g)",
                        setting,
                        target,
                        row_seed,
                        lang,
                        result.ppl,
                        base[lang].ppl,
                    )
    return rows.table()

"""The two task experiments, one job's worth each (docs/methods.md, "Task evaluation").

- :func:`pim_table`: Mu et al.'s input conditions (``monolingual``, ``pim``, ``repeat``)
  of one task and source (-> target), with the inhibited share of every generation;
- :func:`layer_stage_table`: Zhao et al.'s ablation: a language's neurons deactivated in
  one layer-stage cell (:mod:`.stages`), and an equal-count random set of the same
  (layer, module) strata, evaluated on the task in that language and in English, with
  perplexity on both languages' eval documents; cell ``none`` is the unablated baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from torch import nn

from workflow_scripts.evaluation.ablation import all_units, random_like
from workflow_scripts.evaluation.interventions import deactivated, validate_units
from workflow_scripts.evaluation.perplexity import perplexity, perplexity_settings
from workflow_scripts.models.anatomy import decoder_layers
from workflow_scripts.tasks.build import load_task
from workflow_scripts.tasks.evaluate import eval_table, evaluate_prompts, main_metric
from workflow_scripts.tasks.prompts import task_prompts
from workflow_scripts.tasks.stages import cell_units

log = logging.getLogger(__name__)
PathLike = str | Path


def load_tables(files: Mapping[str, PathLike]) -> tuple[dict, dict]:
    """``(tests, shots)``: per language ``id -> row`` of its task table."""
    tests, shots = {}, {}
    for lang, path in files.items():
        tests[lang], shots[lang] = load_task(path)
    return tests, shots


def _prompts(kind, spec, tables, source, target, condition, s, tokenizer):
    tests, shots = tables
    return task_prompts(
        kind,
        spec,
        tests,
        shots,
        source,
        target,
        condition,
        s["pim_languages"],
        s["pim_k"],
        s["n_items"],
        s["n_shots"],
        tokenizer,
        s["chat_template"],
        s["system_prompt"],
    )


def monolingual_prompts(
    tokenizer,
    spec: Mapping[str, Any],
    kind: str,
    files: Mapping[str, PathLike],
    lang: str,
    settings: Mapping[str, Any],
) -> tuple[list, bool, str]:
    """``(prompts, chat template used, metric)`` of the task in ``lang`` alone (no PiM
    helpers): what the fine-tuning experiments score before and after training."""
    tables = load_tables(files)
    s = {**settings, "pim_k": 0}
    prompts, chat = _prompts(kind, spec, tables, lang, None, "monolingual", s, tokenizer)
    return prompts, chat, main_metric(kind, spec)


def pim_table(
    model: nn.Module,
    tokenizer,
    spec: Mapping[str, Any],
    kind: str,
    files: Mapping[str, PathLike],
    source: str,
    target: str | None,
    condition: str,
    settings: Mapping[str, Any],
) -> tuple[pa.Table, dict[str, Any]]:
    """One condition's per-item table and its metadata (chat template used, metric)."""
    tables = load_tables(files)
    prompts, chat = _prompts(kind, spec, tables, source, target, condition, settings, tokenizer)
    metric = main_metric(kind, spec)
    log.info(
        "%s %s->%s: %d items (chat template: %s)", condition, source, target, len(prompts), chat
    )
    rows = evaluate_prompts(
        model,
        tokenizer,
        prompts,
        kind,
        metric,
        chat,
        settings,
        target_lang=target or source,
        inhibition=settings["inhibition"] and kind != "choice",
    )
    table = eval_table(rows, condition=condition, source=source, target=target or source)
    return table, {"chat_template": chat, "metric": metric, "n_items": len(rows)}


def _ppl(model, tokenizer, texts, s) -> dict[str, Any]:
    result = perplexity(model, tokenizer, texts, **perplexity_settings(s["ppl"]))
    return {"ppl": result.ppl, "nll_sum": result.nll_sum, "n_tokens": result.n_tokens}


def layer_stage_table(
    model: nn.Module,
    tokenizer,
    spec: Mapping[str, Any],
    kind: str,
    files: Mapping[str, PathLike],
    lang: str,
    cell: str,
    selection: Sequence[tuple[int, str, int]],
    eval_texts: Mapping[str, Sequence[str]],
    settings: Mapping[str, Any],
) -> tuple[pa.Table, dict[str, Any]]:
    """Per-item rows of the task in ``lang`` and English (``files`` has both) with
    ``lang``'s ``selection`` deactivated in ``cell`` (``none``: nothing deactivated)
    and ``n_random`` equal-count random sets; perplexities in the metadata."""
    s = settings
    tables = load_tables(files)
    metric = main_metric(kind, spec)
    langs = list(dict.fromkeys([lang, "en"]))
    # the same items in both languages: prompts in each over the ids they share
    shared = {
        lang_: {i: r for i, r in tables[0][lang_].items() if all(i in tables[0][o] for o in langs)}
        for lang_ in langs
    }
    prompts, chat = {}, False
    for lang_ in langs:
        prompts[lang_], chat = _prompts(
            kind,
            spec,
            (shared, tables[1]),
            lang_,
            None,
            "monolingual",
            {**s, "pim_k": 0},
            tokenizer,
        )
    if cell == "none":
        settings_list = [("none", [], -1)]
    else:
        units = cell_units(selection, cell, len(decoder_layers(model)), s["stages"])
        validate_units(model, units)
        candidates = all_units(model, sorted({m for _, m, _ in units})) if units else []
        settings_list = [("selected", units, -1)] + [
            ("random", random_like(units, candidates, s["seed"] + r), s["seed"] + r)
            for r in range(s["n_random"])
        ]
    tables_out, ppl = [], {}
    for control, units, seed in settings_list:
        if cell != "none" and not units:
            log.warning("%s: no %s unit of %s in cell %s", control, lang, lang, cell)
        with deactivated(model, units):
            for lang_ in langs:
                rows = evaluate_prompts(model, tokenizer, prompts[lang_], kind, metric, chat, s)
                tables_out.append(
                    eval_table(
                        rows,
                        condition=f"stage-{cell}",
                        eval_lang=lang_,
                        control=control,
                        seed=seed,
                        n_units=len(units),
                    )
                )
                ppl[f"{lang_}/{control}/{seed}"] = _ppl(model, tokenizer, eval_texts[lang_], s)
                log.info(
                    "%s %s %s: mean %s %.3f",
                    cell,
                    control,
                    lang_,
                    metric,
                    sum(r["score"] for r in rows) / len(rows),
                )
    meta = {"chat_template": chat, "metric": metric, "cell": cell, "ppl": ppl}
    return pa.concat_tables(tables_out), meta

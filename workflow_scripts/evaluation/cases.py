"""Generation cases: fixed prompts continued under every ablation and intervention
(docs/methods.md, "Output-language steering and generation scoring"; the seeds show such
example outputs, e.g. "Fudan University is located in" with a region removed).

For one language L: its prompts, greedily continued with no intervention, with each
method's L neurons deactivated by each configured intervention (``zero``, ``mean``,
``scale``), and with each region perturbed (top, bottom, random, core, L's monolingual
region); and the English prompts continued with each method's L neurons activated
(``set``) and with DiffMean steering en -> L.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from torch import nn

from workflow_scripts.evaluation.generation import greedy_continuations, language_of

COLUMNS = ["lang", "prompt_lang", "prompt", "case", "method", "intervention", "n_units"]
COLUMNS += ["generation", "gen_lang"]


@dataclass
class Case:
    case: str  # what the row shows, e.g. "lape fr neurons (mean)"
    method: str
    intervention: str
    n_units: int
    english: bool  # continues the English prompts (else the language's own)
    context: Callable[[], contextlib.AbstractContextManager]


def cases_table(
    model: nn.Module,
    tokenizer,
    lang: str,
    prompts: Sequence[str],
    english_prompts: Sequence[str],
    cases: Sequence[Case],
    classifier,
    max_new_tokens: int = 16,
) -> pa.Table:
    """One row per (case, prompt): the greedy continuation and its identified language."""
    rows = []
    base = [
        Case("no intervention", "-", "none", 0, False, contextlib.nullcontext),
        Case("no intervention", "-", "none", 0, True, contextlib.nullcontext),
    ]
    for case in [*base, *cases]:
        texts = english_prompts if case.english else prompts
        if not texts:
            continue
        with case.context():
            _, new_ids = greedy_continuations(model, tokenizer, texts, max_new_tokens)
        for prompt, ids in zip(texts, new_ids, strict=True):
            gen = tokenizer.decode(ids, skip_special_tokens=True)
            rows.append(
                {
                    "lang": lang,
                    "prompt_lang": "en" if case.english else lang,
                    "prompt": prompt,
                    "case": case.case,
                    "method": case.method,
                    "intervention": case.intervention,
                    "n_units": case.n_units,
                    "generation": gen,
                    "gen_lang": language_of(classifier, gen),
                }
            )
    return pa.Table.from_pylist(rows).select(COLUMNS)


def cases_html(table: pa.Table, model: str) -> str:
    """The cases as an HTML page: one table per language, prompt | case | continuation."""
    import html

    df = table.to_pandas()
    parts = [f"<html><head><meta charset='utf-8'><title>Generation cases, {model}</title>"]
    parts.append(
        "<style>body{font-family:sans-serif} td,th{border:1px solid #ccc;padding:3px 6px;"
        "vertical-align:top} table{border-collapse:collapse;margin-bottom:2em}</style>"
    )
    parts.append(f"</head><body><h1>Generation cases, {html.escape(model)}</h1>")
    parts.append(
        "<p>Greedy continuations of fixed prompts under each ablation and intervention; "
        "<i>lang</i> is the offline identifier's language of the continuation.</p>"
    )
    for lang, rows in df.groupby("lang", sort=False):
        parts.append(f"<h2>{html.escape(lang)}</h2><table>")
        parts.append("<tr><th>prompt</th><th>case</th><th>continuation</th><th>lang</th></tr>")
        for r in rows.itertuples():
            parts.append(
                f"<tr><td>{html.escape(r.prompt)}</td><td>{html.escape(r.case)}</td>"
                f"<td>{html.escape(r.generation)}</td><td>{html.escape(str(r.gen_lang))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)

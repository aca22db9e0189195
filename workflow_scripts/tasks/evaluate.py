"""Evaluating prompts of one task (docs/methods.md, "Task evaluation").

- generation types (translation, math, qa): greedy decoding, stopped at the first
  newline for plain prompts (the answer is one line; a chat model's turn ends at its
  end-of-turn token), scored per item (BLEU and chrF, number match, SQuAD EM / F1);
- choice: every option's log-likelihood given the prompt (lm-evaluation-harness: the
  pair is tokenized whole and the option is the tokens after the prompt's), ``acc``
  (highest sum) and ``acc_norm`` (highest sum per character).

Every prompt, generation and score is kept: :data:`EVAL_COLUMNS`, one row per item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from torch import nn

from workflow_scripts.evaluation.generation import chrf, continuation_nll, greedy_continuations
from workflow_scripts.tasks import metrics
from workflow_scripts.tasks.inhibition import inhibited_shares
from workflow_scripts.tasks.prompts import Prompt

# the per-item score each type is summarised by (``score`` column)
MAIN_METRIC = {"translation": "chrf", "choice": "acc", "math": "exact_match", "qa": "exact_match"}
EVAL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("generation", pa.string()),
        ("reference", pa.string()),
        ("score", pa.float64()),
        ("bleu", pa.float64()),
        ("chrf", pa.float64()),
        ("acc", pa.float64()),
        ("acc_norm", pa.float64()),
        ("exact_match", pa.float64()),
        ("f1", pa.float64()),
        ("loglik", pa.list_(pa.float64())),
        ("n_prompt_tokens", pa.int64()),
        ("n_new_tokens", pa.int64()),
        ("inhibited_share", pa.float64()),
    ]
)
EVAL_COLUMNS = EVAL_SCHEMA.names


def main_metric(kind: str, spec: Mapping[str, Any]) -> str:
    """The task's per-item score: its ``metric`` in config, else the type's default
    (``acc_norm`` for the corpus cloze, whose options differ in length)."""
    if spec.get("metric"):
        return spec["metric"]
    return "acc_norm" if spec.get("type") == "continuation" else MAIN_METRIC[kind]


def _cut(text: str, stop: str | None) -> str:
    text = text.lstrip(" ")
    return (text.split(stop, 1)[0] if stop else text).strip()


def _generated(model, tokenizer, prompts, kind, chat, settings, target_lang, inhibition):
    stop = None if chat else "\n"
    prompt_ids, new_ids = greedy_continuations(
        model,
        tokenizer,
        [p.text for p in prompts],
        max_new_tokens=settings["max_new_tokens"],
        batch_size=settings["batch_size"],
        max_length=settings["max_length"],
        stop_strings=[stop] if stop else (),
        add_special_tokens=not chat,
    )
    shares = (
        inhibited_shares(model, prompt_ids, new_ids, settings["batch_size"])
        if inhibition
        else [float("nan")] * len(prompts)
    )
    rows = []
    for p, ids, new, share in zip(prompts, prompt_ids, new_ids, shares, strict=True):
        text = _cut(tokenizer.decode(new, skip_special_tokens=True), stop)
        row = {"generation": text, "n_prompt_tokens": len(ids), "n_new_tokens": len(new)}
        if kind == "translation":
            row["bleu"] = metrics.sentence_bleu(text, p.reference, target_lang)
            row["chrf"] = chrf(text, p.reference)
        elif kind == "math":
            row["exact_match"] = metrics.number_match(text, p.reference)
        else:
            row["exact_match"] = metrics.qa_exact_match(text, p.reference)
            row["f1"] = metrics.qa_f1(text, p.reference)
        rows.append(row | {"inhibited_share": share})
    return rows


def option_pairs(tokenizer, prompt: Prompt, chat: bool, max_length: int):
    """``(context ids, option ids)`` per option: the pair tokenized whole, the option the
    tokens after the context's (lm-evaluation-harness), the context cut from the left to
    fit ``max_length``."""
    special = not chat
    context = tokenizer(prompt.text, add_special_tokens=special)["input_ids"]
    pairs = []
    for option in prompt.options:
        whole = tokenizer(prompt.text + option, add_special_tokens=special)["input_ids"]
        cont = whole[len(context) :] or whole[-1:]
        pairs.append((context[-max(1, max_length - len(cont)) :], cont))
    return pairs


def _chosen(prompts, tokenizer, model, chat, settings):
    pairs = [option_pairs(tokenizer, p, chat, settings["max_length"]) for p in prompts]
    flat = [pair for item in pairs for pair in item]
    nll = continuation_nll(
        model, [c for c, _ in flat], [o for _, o in flat], settings["batch_size"]
    )
    rows, at = [], 0
    for p, item in zip(prompts, pairs, strict=True):
        ll = [-nll[at + j][0] for j in range(len(item))]
        at += len(item)
        per_char = [v / max(1, len(o)) for v, o in zip(ll, p.options, strict=True)]
        rows.append(
            {
                "generation": p.options[max(range(len(ll)), key=lambda j: (ll[j], -j))],
                "acc": metrics.choice_correct(ll, p.label),
                "acc_norm": metrics.choice_correct(per_char, p.label),
                "loglik": ll,
                "n_prompt_tokens": len(item[0][0]),
                "n_new_tokens": 0,
            }
        )
    return rows


def evaluate_prompts(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Prompt],
    kind: str,
    metric: str,
    chat: bool,
    settings: Mapping[str, Any],
    target_lang: str = "",
    inhibition: bool = False,
) -> list[dict[str, Any]]:
    """One row per prompt (columns :data:`EVAL_COLUMNS`), ``score`` = ``metric``.

    ``settings``: ``max_new_tokens``, ``batch_size``, ``max_length``; ``inhibition``
    also records each generation's inhibited share (:func:`inhibited_shares`).
    """
    if kind == "choice":
        scored = _chosen(prompts, tokenizer, model, chat, settings)
    else:
        scored = _generated(
            model, tokenizer, prompts, kind, chat, settings, target_lang, inhibition
        )
    rows = []
    for p, s in zip(prompts, scored, strict=True):
        row = dict.fromkeys(EVAL_COLUMNS)
        row.update(id=p.id, prompt=p.text, reference=p.reference, **s)
        if row[metric] is None:
            raise ValueError(f"task metric {metric!r} is not computed for {kind} tasks")
        row["score"] = float(row[metric])
        rows.append(row)
    return rows


def eval_table(rows: Sequence[Mapping[str, Any]], **constant: Any) -> pa.Table:
    """The rows as a table, with ``constant`` columns (task, lang, condition, ...) first."""
    n = len(rows)
    cols: dict[str, Any] = {k: pa.array([v] * n) for k, v in constant.items()}
    for field in EVAL_SCHEMA:
        cols[field.name] = pa.array([r[field.name] for r in rows], field.type)
    return pa.table(cols)

"""The seeds' fine-tuning experiments, one job's worth (docs/methods.md, "Fine-tuning").

- ``enhance`` (Zhao et al.): train only the target language's PLND neurons on its train
  documents, against an equal-count random neuron set, all parameters and LoRA, at the
  same steps and data;
- ``forget`` (Zhang et al.): continue training on one language with nothing frozen, the
  core region frozen, an equal-size random region frozen, or the language's monolingual
  region frozen.

:func:`finetune_table` measures every evaluation language's perplexity (and, when given,
a task in the trained language) before and after the fine-tune, per document (per item),
so that every change can be bootstrapped paired, and counts the elements that changed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from workflow_scripts.evaluation.perplexity import perplexity
from workflow_scripts.models.padding import pad_id
from workflow_scripts.tasks.evaluate import evaluate_prompts
from workflow_scripts.training.checkpoints import TrainingCheckpoint
from workflow_scripts.training.loop import continued_pretraining
from workflow_scripts.training.restrictions import Restriction

log = logging.getLogger(__name__)

EXPERIMENTS = {
    "enhance": ("neurons", "random", "full", "lora"),
    "forget": ("none", "core", "random", "monolingual"),
}
PPL = "ppl"
SCHEMA = pa.schema(
    [
        ("eval_lang", pa.string()),
        ("measure", pa.string()),  # ppl, or the task's metric (acc_norm, chrf ...)
        ("phase", pa.string()),  # before / after
        ("value", pa.float64()),  # perplexity, or the mean item score
        ("n", pa.int64()),  # predicted tokens, or items
        # per document: NLL sum and predicted tokens; per task item: score and 1
        ("item_values", pa.list_(pa.float64())),
        ("item_weights", pa.list_(pa.float64())),
    ]
)


@dataclass
class TaskPrompts:
    """A task's prompts in the trained language, scored before and after the fine-tune."""

    lang: str
    prompts: list
    kind: str  # task_type: choice, translation, math, qa
    chat: bool
    metric: str
    settings: Mapping[str, Any]  # task_eval: batch_size, max_length, max_new_tokens


def task_prompts(
    tokenizer, spec: Mapping[str, Any], lang: str, path: str, settings: Mapping[str, Any]
) -> TaskPrompts:
    """The task's prompts in ``lang`` from its task table ``path`` (no PiM helpers)."""
    from workflow_scripts.tasks.build import task_type
    from workflow_scripts.tasks.experiments import monolingual_prompts

    kind = task_type(spec)
    prompts, chat, metric = monolingual_prompts(tokenizer, spec, kind, {lang: path}, lang, settings)
    return TaskPrompts(lang, prompts, kind, chat, metric, settings)


def check_variant(experiment: str, variant: str) -> None:
    """Raise, naming both, for a variant the experiment does not have."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown fine-tuning experiment {experiment!r}: use {list(EXPERIMENTS)}")
    if variant not in EXPERIMENTS[experiment]:
        raise ValueError(
            f"fine-tuning experiment {experiment!r} has no variant {variant!r}: "
            f"use one of {EXPERIMENTS[experiment]}"
        )


def training_steps(settings: Mapping[str, Any], n_docs: int) -> int:
    """``steps``, or ``epochs`` over the ``n_docs`` documents (rounded up to whole steps of
    ``batch_size * grad_accum`` documents)."""
    if settings.get("epochs"):
        per_step = settings["batch_size"] * settings.get("grad_accum", 1)
        return max(1, math.ceil(settings["epochs"] * n_docs / per_step))
    return int(settings["steps"])


def measure(
    model: nn.Module,
    tokenizer,
    eval_texts: Mapping[str, Sequence[str]],
    settings: Mapping[str, Any],
    phase: str,
    task: TaskPrompts | Sequence[TaskPrompts] | None = None,
) -> list[dict[str, Any]]:
    """Rows of :data:`SCHEMA`: each language's perplexity per document (``eval_max_length``,
    ``eval_batch_size``, ``eval_max_tokens`` of ``settings``), and the task's item scores."""
    rows = []
    for lang, texts in eval_texts.items():
        r = perplexity(
            model,
            tokenizer,
            texts,
            max_length=settings["eval_max_length"],
            batch_size=settings["eval_batch_size"],
            max_tokens=settings.get("eval_max_tokens"),
        )
        rows.append(
            dict(
                eval_lang=lang,
                measure=PPL,
                phase=phase,
                value=r.ppl,
                n=r.n_tokens,
                item_values=list(r.doc_nll),
                item_weights=[float(t) for t in r.doc_tokens],
            )
        )
    for t in [task] if isinstance(task, TaskPrompts) else task or []:
        if not t.prompts:
            raise ValueError(f"fine-tuning: the task has no item in {t.lang}")
        items = evaluate_prompts(model, tokenizer, t.prompts, t.kind, t.metric, t.chat, t.settings)
        scores = [float(i["score"]) for i in items]
        rows.append(
            dict(
                eval_lang=t.lang,
                measure=t.metric,
                phase=phase,
                value=sum(scores) / len(scores),
                n=len(scores),
                item_values=scores,
                item_weights=[1.0] * len(scores),
            )
        )
    return rows


def changed_elements(model: nn.Module, before: Mapping[str, torch.Tensor]) -> int:
    """How many elements of the model's parameters differ from ``before`` (host copies)."""
    params = dict(model.named_parameters())
    return int(sum(int((params[n].detach().cpu() != t).sum()) for n, t in before.items()))


def finetune_table(
    model: nn.Module,
    tokenizer,
    docs: Sequence[list[int]],
    restriction: Restriction,
    eval_texts: Mapping[str, Sequence[str]],
    settings: Mapping[str, Any],
    checkpoint: TrainingCheckpoint | None = None,
    task: TaskPrompts | None = None,
    before: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Measure (or take the ``before`` rows of the unmodified model: the base job's),
    fine-tune ``model`` in place under ``restriction``, measure again.

    The restriction is checked on the model before anything runs (an empty neuron set,
    a region of another model, a LoRA module the model lacks: one clear error). The
    metadata hold the training record (steps, losses, seconds), what may change and
    ``n_changed``, the elements that did (counted against a host copy of the weights).
    """
    restriction.check(model, settings)
    s = {**settings, "steps": training_steps(settings, len(docs))}
    if before is None:
        rows = measure(model, tokenizer, eval_texts, s, "before", task)
    else:
        rows = [{**r, "phase": "before"} for r in before]
    count = s.get("count_changed", True)
    before = (
        {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()} if count else {}
    )
    info = continued_pretraining(model, docs, s, pad_id(tokenizer), checkpoint, restriction)
    n_changed = changed_elements(model, before) if count else None
    del before
    after = measure(model, tokenizer, eval_texts, s, "after", task)
    if {(r["eval_lang"], r["measure"]) for r in rows} != {
        (r["eval_lang"], r["measure"]) for r in after
    }:
        raise ValueError("fine-tuning: the base measurement has other languages or measures")
    rows += after
    losses = info.pop("losses")
    meta = {
        **info,
        "steps": s["steps"],
        "n_docs_used": len(docs),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "n_changed": n_changed,
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    log.info(
        "fine-tuned %d steps: loss %.4f -> %.4f, %s elements changed",
        s["steps"],
        losses[0],
        losses[-1],
        n_changed,
    )
    return pa.Table.from_pylist(rows, schema=SCHEMA), meta

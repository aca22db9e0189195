"""Task prompts: few-shot, the chat template when the tokenizer has one, and Mu et al.'s
input conditions (docs/methods.md, "Task evaluation").

Conditions of one item (the same items in every condition, so they compare pairwise):

- ``monolingual``: the item in its source language;
- ``pim``: the source plus the same item in ``k`` other languages (Mu et al.'s PiM:
  translations first, the source last, each line ``{language}: {text}``; helper
  languages never include the target of a translation);
- ``repeat``: the length control: the source line ``k + 1`` times (same extra length and
  format as PiM, no new information).

A translation item is ``{input}\\n{target_language}:`` with ``{input}`` the labelled
source block; other types put the block (unlabelled when monolingual) into the task's
template. Few-shot examples are rendered in the same condition. Without a chat template
the prompt is the instruction, the shots and the item separated by blank lines (a base
model continues the pattern); with one, each shot is a user turn and an assistant turn
(lm-evaluation-harness' few-shot as multi-turn) and the instruction opens the first user
turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workflow_scripts.data.prompts import pim_prompt
from workflow_scripts.languages import language_name

CONDITIONS = ("monolingual", "pim", "repeat")
# key (benchmark name, or corpus type) -> item template, answer template, instruction
TEMPLATES: dict[str, dict[str, str]] = {
    "translation": {
        "template": "{input}\n{target_language}:",
        "answer": " {answer}",
        "instruction": "Translate the {source_language} text into {target_language}.",
    },
    "continuation": {"template": "{input}", "answer": "{answer}", "instruction": ""},
    "xnli": {
        "template": "{input}\nQuestion: {question} True, Neither or False?\nAnswer:",
        "answer": " {answer}",
        "instruction": "",
    },
    "boolq": {
        "template": "{input}\nQuestion: {question}?\nAnswer:",
        "answer": " {answer}",
        "instruction": "",
    },
    "mgsm": {"template": "Question: {input}\nAnswer:", "answer": " {answer}", "instruction": ""},
    "xquad": {
        "template": "{input}\nQuestion: {question}\nAnswer:",
        "answer": " {answer}",
        "instruction": "",
    },
}
TEMPLATES["flores"] = TEMPLATES["translation"]


@dataclass(frozen=True)
class Prompt:
    """One evaluated item: the full prompt text and what it is scored against
    (``options``: the continuations scored for a choice item, ``label`` the correct one)."""

    id: str
    text: str
    reference: str
    options: tuple[str, ...] | None = None
    label: int | None = None


def templates_of(spec: Mapping[str, Any]) -> dict[str, str]:
    """A task's templates: the built-in ones of its benchmark or corpus type, overridden
    by the task's ``template``, ``answer_template`` and ``instruction``."""
    key = spec.get("benchmark") if spec["source"] == "huggingface" else spec.get("type")
    out = dict(TEMPLATES.get(key or "translation", TEMPLATES["translation"]))
    for name, key in (("template", "template"), ("answer", "answer_template")):
        if spec.get(key) is not None:
            out[name] = spec[key]
    if spec.get("instruction") is not None:
        out["instruction"] = spec["instruction"]
    return out


def condition_languages(
    condition: str, source: str, target: str | None, helpers: Sequence[str], k: int
) -> list[str]:
    """The helper languages of a PiM prompt: the first ``k`` of ``helpers`` that are
    neither the source nor the target (empty for other conditions)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown task condition {condition!r}: use one of {CONDITIONS}")
    usable = [lang for lang in helpers if lang not in (source, target)]
    if condition == "pim" and len(usable) < k:
        raise ValueError(
            f"pim with k={k} needs {k} helper languages other than {source}"
            f"{f' and {target}' if target else ''}; have {usable}"
        )
    return usable[:k] if condition == "pim" else []


def _block(kind, condition, source, item_id, rows, helper_langs, k) -> str:
    text = rows[source][item_id]["input"]
    if condition == "monolingual" and kind != "translation":
        return text
    if condition == "monolingual":
        pairs: list[tuple[str, str]] = []
    elif condition == "pim":
        pairs = [(lang, rows[lang][item_id]["input"]) for lang in helper_langs]
    else:
        pairs = [(source, text)] * k
    return pim_prompt(text, pairs, source).lstrip("\n")


def _item(kind, t, condition, source, target, item_id, rows, helper_langs, k) -> str:
    row = rows[source][item_id]
    return t["template"].format(
        input=_block(kind, condition, source, item_id, rows, helper_langs, k),
        question=row.get("question") or "",
        source_language=language_name(source),
        target_language=language_name(target) if target else "",
    )


def _answer(kind, t, target_row: Mapping[str, Any]) -> str:
    if kind == "choice":
        answer = target_row["options"][target_row["label"]]
    else:
        answer = target_row["reference"]
    return t["answer"].format(answer=answer)


def shared_ids(tables: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ids present in every table, in the first table's order (hash order)."""
    rest = [set(t) for t in tables[1:]]
    return [i for i in tables[0] if all(i in r for r in rest)]


def task_prompts(
    kind: str,
    spec: Mapping[str, Any],
    tests: Mapping[str, Mapping[str, dict]],
    shots: Mapping[str, Mapping[str, dict]],
    source: str,
    target: str | None,
    condition: str,
    helpers: Sequence[str],
    k: int,
    n_items: int,
    n_shots: int,
    tokenizer=None,
    chat_template: str = "auto",
    system_prompt: str = "",
) -> tuple[list[Prompt], bool]:
    """The prompts of one (task, source[->target], condition) and whether the chat
    template was used.

    ``tests[lang]`` / ``shots[lang]``: ``id -> row`` of the task tables (:func:`load_task`);
    the items are the first ``n_items`` test ids present in the source, the target and
    every PiM helper language (whatever the condition, so conditions compare the same
    items); shots the first ``n_shots`` (the task's ``n_shots`` if it sets one) few-shot
    ids present in the same languages, never of a test item's group (then the next ones).
    """
    from workflow_scripts.data.prompts import format_prompts

    helper_langs = condition_languages("pim", source, target, helpers, k) if k else []
    used_helpers = helper_langs if condition == "pim" else []
    langs = list(dict.fromkeys([source, *([target] if target else []), *helper_langs]))
    missing = [lang for lang in langs if lang not in tests]
    if missing:
        raise ValueError(f"task prompts: no task table for {missing}")
    items = shared_ids([tests[lang] for lang in langs])[:n_items]
    if not items:
        raise ValueError(f"task prompts: no test item present in all of {langs}")
    n_shots = spec.get("n_shots", n_shots)  # a task's own number of shots wins
    pool = shared_ids([shots[lang] for lang in langs if lang in shots]) if shots else []
    t = templates_of(spec)
    answer_lang = target or source
    instruction = t["instruction"].format(
        source_language=language_name(source),
        target_language=language_name(target) if target else "",
    )
    has_chat = chat_template != "never" and getattr(tokenizer, "chat_template", None)
    if chat_template == "always" and not has_chat:
        format_prompts(tokenizer, [], "always")  # the one clear error of the actcount stage
    out = []
    for item_id in items:
        group = tests[source][item_id]["group_id"]
        chosen = [s for s in pool if shots[source][s]["group_id"] != group][:n_shots]
        demos = [
            (
                _item(kind, t, condition, source, target, s, shots, used_helpers, k),
                _answer(kind, t, shots[answer_lang][s]),
            )
            for s in chosen
        ]
        query = _item(kind, t, condition, source, target, item_id, tests, used_helpers, k)
        if has_chat:
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            for i, (q, a) in enumerate(demos):
                opening = f"{instruction}\n\n" if instruction and i == 0 else ""
                messages += [
                    {"role": "user", "content": opening + q},
                    {"role": "assistant", "content": a.strip()},
                ]
            opening = f"{instruction}\n\n" if instruction and not demos else ""
            messages.append({"role": "user", "content": opening + query})
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            parts = [instruction] if instruction else []
            parts += [q + a for q, a in demos] + [query]
            text = "\n\n".join(parts)
        ref_row = tests[answer_lang][item_id]
        options = None
        if kind == "choice":  # the exact continuations scored, as an answer would be written
            written = [t["answer"].format(answer=o) for o in ref_row["options"]]
            options = tuple(o.strip() if has_chat else o for o in written)
        out.append(Prompt(item_id, text, ref_row["reference"], options, ref_row["label"]))
    return out, bool(has_chat)

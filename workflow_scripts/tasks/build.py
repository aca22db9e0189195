"""Task data as a stage: ``results/tasks/{task}/{lang}.parquet`` (docs/methods.md,
"Task evaluation").

One row per item of one language, columns :data:`TASK_COLUMNS`: ``id`` (the same for the
same item in every language: directions and PiM prompts join languages by it),
``group_id`` (few-shot examples never share it with a test item), ``split`` (``test`` or
``fewshot``), ``input``, ``question``, ``options``, ``label``, ``reference``.

Sources (``source:`` of a task in config):

- ``corpus``: a prepared corpus (offline; the bundled one by default). ``type:
  translation``: each paragraph is the item's text in this language (``input`` and
  ``reference``: a direction src->tgt pairs src's input with tgt's reference by id); test
  items from the corpus' eval split, few-shot examples from its train split (the split is
  by help page, so an example never comes from a test item's page). ``type:
  continuation``: a multiple-choice cloze built from the same paragraphs: the first half
  is the context, the options are its true second half and the second halves of the
  next ``n_options - 1`` paragraphs in hash order (the same ids in every language where
  they exist), the correct option's position a hash of the id.
- ``huggingface``: a real benchmark through ``datasets`` (:mod:`.benchmarks`: FLORES+,
  XNLI, MGSM, BoolQ, XQuAD; hub id or a local directory with the hub layout).
- ``translated:<dataset>``: the translation stage's tables (``id``, ``text``; flagged
  rows left out), type translation; the first ``n_fewshot_pool`` ids in hash order are
  the few-shot pool, the rest test items (each id is its own group).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from workflow_scripts.data.corpus import doc_rank, documents
from workflow_scripts.data.prompts import prefix, translated_documents
from workflow_scripts.io import read_metadata, read_parquet, write_parquet

TASK_COLUMNS = ["id", "group_id", "split", "input", "question", "options", "label", "reference"]
TASK_TYPES = ("translation", "choice", "math", "qa")
CORPUS_TYPES = {"translation": "translation", "continuation": "choice"}
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("group_id", pa.string()),
        ("split", pa.string()),
        ("input", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("label", pa.int64()),
        ("reference", pa.string()),
    ]
)


def task_type(spec: Mapping[str, Any]) -> str:
    """The evaluation type of a task definition (translation, choice, math, qa)."""
    source = spec["source"]
    if source == "huggingface":
        from workflow_scripts.tasks.benchmarks import TASK_TYPES as BENCH_TYPES

        return BENCH_TYPES[spec["benchmark"]]
    if source == "corpus":
        return CORPUS_TYPES[spec.get("type", "translation")]
    return "translation"


def _row(doc_id, group, split, text, **extra) -> dict[str, Any]:
    row = dict.fromkeys(TASK_COLUMNS)
    row.update(id=doc_id, group_id=group, split=split, input=text, reference=text)
    row.update(extra)
    return row


def _groups(path: str | Path) -> dict[str, str]:
    table = read_parquet(path, ["doc_id", "group_id"])
    return dict(zip(table["doc_id"].to_pylist(), table["group_id"].to_pylist(), strict=True))


def _position(doc_id: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=4).digest(), "big") % n


def _continuation_rows(docs: dict[str, str], ids: list[str], split, groups, n_options):
    """Cloze rows: context = first half, options = true rest + the next paragraphs' rests."""
    halves = {}
    for d in ids:
        head = prefix(docs[d], 0.5)
        rest = docs[d][len(head) :]
        if head and rest.strip():
            halves[d] = (head, rest)  # rest keeps its leading space where it had one
    kept = [d for d in ids if d in halves]
    if len(kept) < n_options:
        return []
    rows = []
    for i, d in enumerate(kept):
        others = [halves[kept[(i + j) % len(kept)]][1] for j in range(1, n_options)]
        label = _position(d, n_options)
        options = [*others[:label], halves[d][1], *others[label:]]
        rows.append(
            _row(d, groups[d], split, halves[d][0], options=options, label=label)
            | {"reference": halves[d][1]}
        )
    return rows


def corpus_rows(path: str | Path, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a ``corpus`` task from one prepared corpus file (see the module docstring)."""
    kind = spec.get("type", "translation")
    groups = _groups(path)
    rows = []
    for split, corpus_split, n, max_chars in (
        ("test", "eval", spec["max_items"], spec["max_chars"]),
        ("fewshot", "train", spec["n_fewshot_pool"], spec["fewshot_max_chars"]),
    ):
        try:
            docs = documents(path, corpus_split, max_chars)
        except ValueError:  # no document in that split: no items of it (checked by the caller)
            docs = {}
        ids = sorted(docs, key=doc_rank)
        if kind == "continuation":
            # a pool larger than n so that distractors exist for every kept item
            rows += _continuation_rows(docs, ids[: n + 1], split, groups, spec["n_options"])[:n]
        else:
            rows += [_row(d, groups[d], split, docs[d]) for d in ids[:n]]
    return rows


def translated_rows(path: str | Path, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a ``translated:<dataset>`` task from one translated table."""
    docs = translated_documents(path, spec["max_chars"])
    ids = sorted(docs, key=doc_rank)
    pool = spec["n_fewshot_pool"]
    rows = [_row(d, d, "fewshot", docs[d]) for d in ids[:pool]]
    return rows + [_row(d, d, "test", docs[d]) for d in ids[pool : pool + spec["max_items"]]]


def build_task(
    spec: Mapping[str, Any], lang: str, source_file: str | Path | None, name: str = ""
) -> pa.Table:
    """The task table of one language (``source_file``: the prepared corpus or translated
    table for those sources, None for ``huggingface``). Raises ``ValueError`` naming the
    task and language when no test item is left."""
    source = spec["source"]
    if source == "corpus":
        rows = corpus_rows(source_file, spec)
    elif source.startswith("translated:"):
        rows = translated_rows(source_file, spec)
    elif source == "huggingface":
        from workflow_scripts.tasks.benchmarks import read_benchmark

        rows = read_benchmark(dict(spec), lang)
    else:
        raise ValueError(f"task {name!r}: unknown source {source!r}")
    if not any(r["split"] == "test" for r in rows):
        raise ValueError(
            f"task {name!r}, language {lang!r}: no test item (source {source}, "
            f"max_chars {spec.get('max_chars')}); nothing to evaluate"
        )
    columns = {c: [r[c] for r in rows] for c in TASK_COLUMNS}
    return pa.table(columns, schema=SCHEMA)


def write_task(table: pa.Table, out: str | Path, name: str, lang: str, kind: str, spec) -> None:
    """Write a task table with its definition in the metadata."""
    meta = {"task": name, "lang": lang, "type": kind, "spec": dict(spec)}
    write_parquet(table, out, metadata=meta)


def load_task(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``(test, fewshot)``: ``id -> row`` of a task table, each in hash order of the id."""
    rows = read_parquet(path, TASK_COLUMNS).to_pylist()
    out: tuple[dict, dict] = ({}, {})
    for row in sorted(rows, key=lambda r: doc_rank(r["id"])):
        out[row["split"] != "test"][row["id"]] = row
    return out


def task_meta(path: str | Path) -> dict[str, Any]:
    """The metadata a task table was written with (task, lang, type, spec)."""
    return read_metadata(path)

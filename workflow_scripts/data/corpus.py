"""Corpus preparation: read one language from a source, clean, split, write Parquet.

Sources (``source:`` of a corpus in config):

- ``bundled``: the offline Parquet in ``resources/corpus/`` (columns item_id,
  lang, text, source, license, group_id); ``doc_id`` is the ``item_id``, shared
  across languages for aligned paragraphs.
- ``huggingface``: any dataset through :func:`datasets.load_dataset` with
  streaming, e.g. ``wikimedia/wikipedia`` (config ``20231101.{lang}``) or
  ``oscar-corpus/OSCAR-2301`` (``data_files: {lang}_meta/*.jsonl.zst``,
  ``text_field: content``). A local directory with the hub layout works too.
- ``local``: ``.txt`` (one document per non-empty line, or per blank-line
  separated paragraph), ``.jsonl`` or ``.parquet`` files; ``{lang}`` in the path
  is replaced by the language code.

Every document goes through the same cleaning (whitespace normalised,
``min_chars``/``max_chars``, exact dedup) and a deterministic train/eval split
by a hash of its group (the help page for the bundled corpus, the document
otherwise), never by position. Reading stops after ``max_docs`` kept
documents, so a streamed hub dataset is never downloaded whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workflow_scripts.io import read_parquet, write_parquet

log = logging.getLogger(__name__)

CORPUS_COLUMNS = ["doc_id", "text", "split", "source", "group_id"]
_SPACE = re.compile(r"\s+")


def split_of(group_id: str, eval_fraction: float) -> str:
    """``'eval'`` for a stable ``eval_fraction`` share of groups, ``'train'`` otherwise."""
    digest = hashlib.blake2b(group_id.encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") / 2**64 < eval_fraction else "train"


def clean(
    records: Iterable[dict[str, str]],
    min_chars: int,
    max_chars: int,
    max_docs: int | None = None,
) -> Iterator[dict[str, str]]:
    """Normalise whitespace, drop too short/long texts and exact duplicates.

    ``max_chars`` drops (does not truncate) longer documents, as the papers drop
    over-long documents. Stops after ``max_docs`` kept records.
    """
    seen: set[bytes] = set()
    kept = 0
    if max_docs is not None and max_docs <= 0:
        return
    for rec in records:
        text = _SPACE.sub(" ", rec["text"] or "").strip()
        if not min_chars <= len(text) <= max_chars:
            continue
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if key in seen:
            continue
        seen.add(key)
        kept += 1
        yield {**rec, "text": text}
        if max_docs is not None and kept >= max_docs:
            return


def read_bundled(spec: dict[str, Any], lang: str) -> Iterator[dict[str, str]]:
    """Documents of ``lang`` from the bundled corpus Parquet (``spec['path']``)."""
    path = spec["path"]
    table = read_parquet(path, ["item_id", "lang", "text", "source", "group_id"])
    langs = set(table.column("lang").to_pylist())
    if lang not in langs:
        raise ValueError(
            f"language {lang!r} is not in the bundled corpus {path} "
            f"(it has: {', '.join(sorted(langs))})"
        )
    table = table.filter(pc.equal(table.column("lang"), lang))
    for row in table.to_pylist():
        yield {
            "doc_id": row["item_id"],
            "text": row["text"],
            "source": row["source"],
            "group_id": row["group_id"],
        }


def read_huggingface(spec: dict[str, Any], lang: str) -> Iterator[dict[str, str]]:
    """Stream documents of ``lang`` from a Hugging Face dataset (hub id or local dir)."""
    import datasets

    fmt = {"lang": spec.get("lang_map", {}).get(lang, lang)}
    kwargs: dict[str, Any] = {"split": spec.get("split", "train"), "streaming": True}
    if spec.get("name"):
        kwargs["name"] = spec["name"].format(**fmt)
    if spec.get("data_files"):
        kwargs["data_files"] = spec["data_files"].format(**fmt)
    dataset = spec["dataset"]
    try:
        stream = datasets.load_dataset(dataset, **kwargs)
    except Exception as err:  # datasets raises many types; name the culprit once
        raise ValueError(
            f"could not open Hugging Face dataset {dataset!r} with {kwargs}: {err}"
        ) from err
    field = spec.get("text_field", "text")
    id_field = spec.get("id_field")
    for i, row in enumerate(stream):
        if field not in row:
            raise ValueError(
                f"dataset {dataset!r} has no text field {field!r} (fields: {sorted(row)})"
            )
        doc_id = f"{dataset}:{row[id_field] if id_field else i}"
        yield {"doc_id": doc_id, "text": row[field], "source": dataset, "group_id": doc_id}


def read_local(spec: dict[str, Any], lang: str) -> Iterator[dict[str, str]]:
    """Documents of ``lang`` from local ``.txt``, ``.jsonl`` or ``.parquet`` files."""
    path = Path(spec["path"].format(lang=lang))
    if not path.exists():
        raise FileNotFoundError(f"local corpus file {path} does not exist")
    field = spec.get("text_field", "text")
    source = str(path)
    if path.suffix == ".txt":
        raw = path.read_text(encoding="utf-8")
        unit = spec.get("txt_unit", "line")
        texts: Iterable[Any] = raw.split("\n\n") if unit == "paragraph" else raw.splitlines()
    elif path.suffix == ".jsonl":
        texts = (json.loads(line)[field] for line in path.open(encoding="utf-8") if line.strip())
    elif path.suffix == ".parquet":
        texts = read_parquet(path, [field]).column(field).to_pylist()
    else:
        raise ValueError(f"local corpus file {path}: use .txt, .jsonl or .parquet")
    for i, text in enumerate(texts):
        doc_id = f"{path.name}:{i}"
        yield {"doc_id": doc_id, "text": text, "source": source, "group_id": doc_id}


READERS = {"bundled": read_bundled, "huggingface": read_huggingface, "local": read_local}


def read_source(spec: dict[str, Any], lang: str) -> Iterator[dict[str, str]]:
    """Dispatch on ``spec['source']``."""
    source = spec["source"]
    if source not in READERS:
        raise ValueError(f"unknown corpus source {source!r}: use one of {sorted(READERS)}")
    return READERS[source](spec, lang)


def prepare_corpus(spec: dict[str, Any], lang: str, out: str | Path, name: str = "") -> int:
    """Read, clean and split one language of a corpus; write ``out``. Returns the row count.

    Raises ``ValueError`` naming the corpus and language when nothing is left.
    """
    records = clean(
        read_source(spec, lang),
        min_chars=spec.get("min_chars", 20),
        max_chars=spec.get("max_chars", 20000),
        max_docs=spec.get("max_docs"),
    )
    eval_fraction = spec.get("eval_fraction", 0.1)
    rows: dict[str, list[str]] = {c: [] for c in CORPUS_COLUMNS}
    for rec in records:
        for col in ("doc_id", "text", "source", "group_id"):
            rows[col].append(rec[col])
        rows["split"].append(split_of(rec["group_id"], eval_fraction))
    n = len(rows["doc_id"])
    if n == 0:
        raise ValueError(
            f"corpus {name or spec.get('source')!r}, language {lang!r}: no document "
            f"left after cleaning (min_chars={spec.get('min_chars', 20)}, "
            f"max_chars={spec.get('max_chars', 20000)}); the corpus is empty"
        )
    n_eval = rows["split"].count("eval")
    log.info("%s/%s: %d documents (%d eval)", name, lang, n, n_eval)
    write_parquet(rows, out, metadata={"corpus": name, "lang": lang, "n_eval": n_eval})
    return n


def load_corpus(path: str | Path, split: str | None = None) -> pa.Table:
    """Read a prepared corpus file, optionally one split only; fails clearly if empty."""
    table = read_parquet(path, CORPUS_COLUMNS)
    if split is not None:
        table = table.filter(pc.equal(table.column("split"), split))
    if table.num_rows == 0:
        raise ValueError(f"{path}: no documents{f' in split {split!r}' if split else ''}")
    return table


def corpus_texts(paths: Iterable[str | Path], split: str = "train") -> Iterator[str]:
    """Texts of a split over several prepared corpus files, file by file (streamed)."""
    for path in paths:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(columns=["text", "split"], batch_size=4096):
            for text, s in zip(
                batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
            ):
                if s == split:
                    yield text


def doc_rank(doc_id: str) -> bytes:
    """Position of a document in the corpus-independent sampling order (a hash of its id)."""
    return hashlib.blake2b(doc_id.encode(), digest_size=8).digest()


def documents(path: str | Path, split: str, max_chars: int | None = None) -> dict[str, str]:
    """``doc_id -> text`` of one split, optionally only texts of at most ``max_chars``."""
    table = load_corpus(path, split)
    ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    return {
        d: t for d, t in zip(ids, texts, strict=True) if max_chars is None or len(t) <= max_chars
    }


def sample_texts(path: str | Path, split: str, n: int) -> list[str]:
    """``n`` texts of a split in hash order of their ``doc_id`` (deterministic, not positional)."""
    docs = documents(path, split)
    return [docs[d] for d in sorted(docs, key=doc_rank)[:n]]


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[str]]:
    """Batches of ``texts`` sorted by length (on CPU this matters more than the batch size)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for i in range(0, len(order), batch_size):
        yield [texts[j] for j in order[i : i + batch_size]]

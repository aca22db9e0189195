"""The source items of a ``datasets`` entry: the bundled corpus, a local file or a hub dataset.

Finite sources are ordered by a hash of the item id and cut to ``max_items``; a hub
dataset is streamed and cut (never downloaded whole).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow_scripts.config import BUNDLED_CORPUS
from workflow_scripts.data.corpus import clean, doc_rank, read_bundled, read_huggingface, split_of
from workflow_scripts.io import read_parquet
from workflow_scripts.languages import check_language
from workflow_scripts.translation.settings import dataset_with_defaults


@dataclass(frozen=True)
class Item:
    """One source item: a stable id and its text."""

    id: str
    text: str


def _local_records(path: Path, text_field: str, id_field: str | None) -> Iterator[dict[str, str]]:
    """Records of a local file; a missing text or id field is one clear error."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            yield {"doc_id": f"{path.name}:{i}", "text": line}
        return
    if suffix == ".jsonl":
        rows: Iterable[Mapping[str, Any]] = (
            json.loads(line) for line in path.open(encoding="utf-8") if line.strip()
        )
    elif suffix in (".csv", ".tsv"):
        rows = csv.DictReader(
            path.open(encoding="utf-8", newline=""),
            dialect="excel-tab" if suffix == ".tsv" else "excel",
        )
    elif suffix == ".parquet":
        rows = read_parquet(path).to_pylist()
    else:
        raise ValueError(f"local dataset file {path}: use .jsonl, .parquet, .csv, .tsv or .txt")
    for i, row in enumerate(rows):
        for name in (text_field, id_field):
            if name is not None and name not in row:
                raise ValueError(
                    f"local dataset file {path} has no field {name!r} (fields: {sorted(row)}); "
                    "set text_field / id_field"
                )
        doc_id = str(row[id_field]) if id_field else f"{path.name}:{i}"
        yield {"doc_id": doc_id, "text": row[text_field]}


def load_items(spec: Mapping[str, Any], name: str = "") -> list[Item]:
    """The items of a ``datasets`` entry, in their stable order, cut to ``max_items``.

    Raises ``ValueError`` naming the dataset when the source has no such text
    field or nothing is left after cleaning.
    """
    spec = dataset_with_defaults(spec)
    lang = check_language(spec["source_lang"])
    source, limit = spec["source"], spec["max_items"]
    stream = source == "huggingface"
    if source == "bundled":
        path = spec.get("path", str(BUNDLED_CORPUS))
        records: Iterable[dict[str, str]] = read_bundled({"path": path}, lang)
        if spec["subset"] != "all":
            frac = spec["eval_fraction"]
            records = (r for r in records if split_of(r["group_id"], frac) == spec["subset"])
    elif source == "local":
        if "path" not in spec:
            raise ValueError(f"dataset {name!r}: source local needs a path")
        path = Path(spec["path"].format(lang=lang))
        if not path.exists():
            raise FileNotFoundError(f"dataset {name!r}: local file {path} does not exist")
        records = _local_records(path, spec["text_field"], spec.get("id_field"))
    elif source == "huggingface":
        if "dataset" not in spec:
            raise ValueError(f"dataset {name!r}: source huggingface needs dataset: (a hub id)")
        records = read_huggingface({**spec, "split": spec.get("split", "train")}, lang)
    else:
        raise ValueError(f"dataset {name!r}: unknown source {source!r}")
    kept = clean(records, spec["min_chars"], spec["max_chars"], max_docs=limit if stream else None)
    items = [Item(str(r["doc_id"]), r["text"]) for r in kept]
    if not stream:
        items = sorted(items, key=lambda it: doc_rank(it.id))[:limit]
    if not items:
        raise ValueError(
            f"dataset {name!r}: no item left in {lang!r} after cleaning "
            f"(min_chars={spec['min_chars']}, max_chars={spec['max_chars']})"
        )
    return items

"""Tiny local copies of the benchmarks' Hugging Face hub layouts, for offline tests of
:mod:`workflow_scripts.tasks.benchmarks`.

Each ``write_*`` writes synthetic but well-formed rows in the hub repository's file layout
(Parquet shards and, where the hub repo has one, the README's YAML ``configs:`` block), so
that ``datasets.load_dataset(root, name=..., split=..., streaming=True)`` resolves configs
and splits exactly as on the hub. Every text carries a language tag ``[code]`` and the item
number, so tests can check that the same id is the same item in every language.

- FLORES+ (``openlanguagedata/flores_plus``): ``dev/{code}.parquet`` and
  ``devtest/{code}.parquet``, one config per language (``eng_Latn``...) plus ``default``.
- XNLI (``facebook/xnli``): ``{lang}/{train,validation,test}-00000-of-00001.parquet``.
- MGSM (``juletxara/mgsm``): ``{lang}/{train,test}-00000-of-00001.parquet``; the hub repo
  long used a loading script with TSV files (``mgsm_{lang}.tsv``, ``exemplars.py``), which
  ``datasets`` >= 4 refuses; it has since been converted to Parquet, and this layout (the
  hub's usual conversion) is an assumption. Train rows are the 8 exemplars with their
  localised "Question:" / "Step-by-Step Answer:" prefixes; test rows have no ``answer``.
- BoolQ (``google/boolq``): ``data/{train,validation}-00000-of-00001.parquet``.
- XQuAD (``google/xquad``): ``xquad.{lang}/validation-00000-of-00001.parquet``; three
  questions share each context, as paragraphs in SQuAD.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# our code -> FLORES+ code (ISO 639-3 + ISO 15924), written independently of the loader's map
FLORES_CODES = {
    "en": "eng_Latn",
    "de": "deu_Latn",
    "fr": "fra_Latn",
    "es": "spa_Latn",
    "ru": "rus_Cyrl",
    "zh": "cmn_Hans",
    "vi": "vie_Latn",
    "ar": "arb_Arab",
    "ko": "kor_Hang",
    "ja": "jpn_Jpan",
}
DOMAINS = ("wikinews", "wikivoyage", "wikibooks")
# MGSM exemplar prefixes as in the original exemplars.py (a few languages)
MGSM_PREFIX = {"en": "Question: ", "de": "Frage: ", "fr": "Question : ", "zh": "问题："}
MGSM_ANSWER = {"en": "Step-by-Step Answer: ", "de": "Schritt-für-Schritt-Antwort: "}


def _write(path: Path, columns: dict[str, list], schema: pa.Schema | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)


def _readme(root: Path, configs: Iterable[tuple[str, Sequence[tuple[str, str]]]]) -> None:
    """README.md whose YAML header has the hub's ``configs:`` block."""
    lines = ["---", "configs:"]
    for name, splits in configs:
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits:
            lines += [f"  - split: {split}", f"    path: {path}"]
    (root / "README.md").write_text("\n".join([*lines, "---", "", "# test copy", ""]), "utf-8")


def write_flores(root: str | Path, langs: Sequence[str], n: int = 12) -> Path:
    """FLORES+: ``langs`` are our codes (mapped as :data:`FLORES_CODES`) or FLORES+ codes.

    ``n`` sentences per split; three consecutive sentences share an article ``url``; dev
    ids and urls differ from devtest ones (as in FLORES+, the splits are disjoint); the
    ``domain`` cycles over :data:`DOMAINS` by article."""
    root = Path(root)
    codes = [FLORES_CODES.get(lang, lang) for lang in langs]
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("iso_639_3", pa.string()),
            ("iso_15924", pa.string()),
            ("glottocode", pa.string()),
            ("text", pa.string()),
            ("url", pa.string()),
            ("domain", pa.string()),
            ("topic", pa.string()),
            ("has_image", pa.int64()),
            ("has_hyperlink", pa.int64()),
            ("last_updated", pa.string()),
        ]
    )
    for code in codes:
        iso, script = code.split("_", 1)
        for split, offset in (("dev", 0), ("devtest", 1000)):
            ids = [offset + i for i in range(n)]
            _write(
                root / split / f"{code}.parquet",
                {
                    "id": ids,
                    "iso_639_3": [iso] * n,
                    "iso_15924": [script] * n,
                    "glottocode": [f"{iso[:4]}1234"] * n,
                    "text": [f"[{code}] {split} sentence {i}." for i in ids],
                    "url": [f"https://en.wikinews.org/wiki/{split}_{i // 3}" for i in ids],
                    "domain": [DOMAINS[(i // 3) % 3] for i in ids],
                    "topic": ["science"] * n,
                    "has_image": [0] * n,
                    "has_hyperlink": [i % 2 for i in ids],
                    "last_updated": ["2.0"] * n,
                },
                schema,
            )
    splits = [("dev", "dev/*.parquet"), ("devtest", "devtest/*.parquet")]
    configs = [("default", splits)]
    configs += [
        (c, [("dev", f"dev/{c}.parquet"), ("devtest", f"devtest/{c}.parquet")]) for c in codes
    ]
    _readme(root, configs)
    return root


def write_xnli(root: str | Path, langs: Sequence[str], n: int = 12) -> Path:
    """XNLI: one config per language code (``en``, ``de``...), splits train, validation,
    test of ``n`` rows each, labels cycling 0 entailment, 1 neutral, 2 contradiction."""
    root = Path(root)
    schema = pa.schema(
        [("premise", pa.string()), ("hypothesis", pa.string()), ("label", pa.int64())]
    )
    for lang in langs:
        for split in ("train", "validation", "test"):
            _write(
                root / lang / f"{split}-00000-of-00001.parquet",
                {
                    "premise": [f"[{lang}] {split} premise {i}." for i in range(n)],
                    "hypothesis": [f"[{lang}] {split} hypothesis {i}." for i in range(n)],
                    "label": [i % 3 for i in range(n)],
                },
                schema,
            )
    _readme(
        root,
        [(lang, [(s, f"{lang}/{s}-*") for s in ("train", "test", "validation")]) for lang in langs],
    )
    return root


def write_mgsm(root: str | Path, langs: Sequence[str], n: int = 12) -> Path:
    """MGSM: one config per language; ``test`` has ``n`` problems (answer ``i + 10``, no
    worked answer), ``train`` the 8 exemplars with their localised prefixes."""
    root = Path(root)
    schema = pa.schema(
        [
            ("question", pa.string()),
            ("answer", pa.string()),
            ("answer_number", pa.int32()),
            ("equation_solution", pa.string()),
        ]
    )
    for lang in langs:
        prefix = MGSM_PREFIX.get(lang, "Question: ")
        answer = MGSM_ANSWER.get(lang, "Step-by-Step Answer: ")
        _write(
            root / lang / "test-00000-of-00001.parquet",
            {
                "question": [f"[{lang}] test problem {i}: 4 + {i + 6}?" for i in range(n)],
                "answer": [None] * n,
                "answer_number": [i + 10 for i in range(n)],
                "equation_solution": [None] * n,
            },
            schema,
        )
        _write(
            root / lang / "train-00000-of-00001.parquet",
            {
                "question": [f"{prefix}[{lang}] exemplar {i}: 2 + {i}?" for i in range(8)],
                "answer": [f"{answer}[{lang}] 2 + {i} = {i + 2}." for i in range(8)],
                "answer_number": [i + 2 for i in range(8)],
                "equation_solution": [f"2 + {i} = {i + 2}." for i in range(8)],
            },
            schema,
        )
    _readme(root, [(lang, [(s, f"{lang}/{s}-*") for s in ("train", "test")]) for lang in langs])
    return root


def write_boolq(root: str | Path, n: int = 12) -> Path:
    """BoolQ (English only): ``data/train`` and ``data/validation`` of ``n`` rows, answers
    alternating False / True."""
    root = Path(root)
    schema = pa.schema(
        [("question", pa.string()), ("answer", pa.bool_()), ("passage", pa.string())]
    )
    for split in ("train", "validation"):
        _write(
            root / "data" / f"{split}-00000-of-00001.parquet",
            {
                "question": [f"is {split} statement {i} true" for i in range(n)],
                "answer": [bool(i % 2) for i in range(n)],
                "passage": [f"[en] {split} passage {i}." for i in range(n)],
            },
            schema,
        )
    _readme(root, [("default", [(s, f"data/{s}-*") for s in ("train", "validation")])])
    return root


def xquad_id(i: int) -> str:
    """The id of question ``i`` (SQuAD-like hex, the same in every language)."""
    return hashlib.md5(f"question {i}".encode()).hexdigest()[:24]


def write_xquad(root: str | Path, langs: Sequence[str], n: int = 12) -> Path:
    """XQuAD: configs ``xquad.{lang}``, only a ``validation`` split of ``n`` questions;
    questions ``3k, 3k+1, 3k+2`` share context ``k``, whose text contains each answer."""
    root = Path(root)
    answers_type = pa.struct(
        [("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))]
    )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("context", pa.string()),
            ("question", pa.string()),
            ("answers", answers_type),
        ]
    )
    for lang in langs:
        contexts, answers = [], []
        for i in range(n):
            context = f"[{lang}] Paragraph {i // 3}: " + " ".join(
                f"fact{j} is value{j}." for j in range(3 * (i // 3), 3 * (i // 3) + 3)
            )
            text = f"value{i}"
            contexts.append(context)
            answers.append({"text": [text], "answer_start": [context.index(text + ".")]})
        _write(
            root / f"xquad.{lang}" / "validation-00000-of-00001.parquet",
            {
                "id": [xquad_id(i) for i in range(n)],
                "context": contexts,
                "question": [f"[{lang}] What is fact{i}?" for i in range(n)],
                "answers": answers,
            },
            schema,
        )
    _readme(
        root, [(f"xquad.{lang}", [("validation", f"xquad.{lang}/validation-*")]) for lang in langs]
    )
    return root


def rename_column(root: str | Path, old: str, new: str) -> None:
    """Rename a column in every Parquet file under ``root`` (a dataset whose layout drifted)."""
    for path in Path(root).rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(
            table.rename_columns([new if c == old else c for c in table.column_names]), path
        )

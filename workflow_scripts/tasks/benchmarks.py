"""Real multilingual benchmarks through Hugging Face ``datasets``, one language at a time,
as task rows (docs/methods.md, "Task evaluation"; the row format of :mod:`.build`).

Each benchmark is read with ``datasets.load_dataset(dataset, name=..., split=...,
streaming=True)`` from its hub id or from a local directory with the hub's file layout
(as :func:`workflow_scripts.data.corpus.read_huggingface`); reading stops once the rows
needed are in, so a hub dataset is never downloaded whole. Built-in layouts (``spec``
overrides each of them, see :func:`read_benchmark`):

- ``flores`` (translation): FLORES+ ``openlanguagedata/flores_plus`` (gated: accept its
  terms and log in); config per language ``{lang}`` = ISO 639-3 + ISO 15924 (``eng_Latn``,
  ``cmn_Hans``...); test split ``devtest``, few-shot ``dev``; fields ``id``, ``text``,
  ``url`` (the group: sentences of one article share it).
- ``xnli`` (choice): ``facebook/xnli``, config ``{lang}``, test ``test``, few-shot
  ``validation``; fields ``premise``, ``hypothesis``, ``label`` (0 entailment, 1 neutral,
  2 contradiction). Options are the English words ``True`` / ``Neither`` / ``False`` in
  that label order (lm-evaluation-harness' English XNLI prompt), in every language.
  No ``ja`` or ``ko``.
- ``mgsm`` (math): ``juletxara/mgsm``, config ``{lang}``, test ``test``, few-shot
  ``train`` (the 8 exemplars); fields ``question``, ``answer_number``. The exemplars'
  shared localised prefix ("Question: ", "问题：") is removed from few-shot inputs (the
  prompt template adds its own). Only bn, de, en, es, fr, ja, ru, sw, te, th, zh. Older
  revisions of the repo are a loading script that ``datasets`` >= 4 refuses; a Parquet
  mirror with the same configs and fields (``jbross-ibm-research/mgsm``) reads the same.
- ``boolq`` (choice, English only): ``google/boolq``, no config, test ``validation``,
  few-shot ``train``; fields ``passage``, ``question``, ``answer`` (bool); options
  ``no`` / ``yes``.
- ``xquad`` (qa): ``google/xquad``, config ``xquad.{lang}``, one split ``validation``;
  fields ``id``, ``context``, ``question``, ``answers`` (the first answer text is the
  reference). Few-shot examples come from the same split, from contexts no test item
  uses. No ``fr``, ``ja`` or ``ko``.

Ids: the same item has the same ``id`` in every language (FLORES+ and XQuAD: their ``id``
field; XNLI, MGSM, BoolQ: the row index, as these are aligned by position). A few-shot row
from its own split is ``{split}:{id}``, so it never collides with a test id. Groups (never
shared by a test item and a few-shot example): FLORES+ the article ``url``, XQuAD the
context (named by the id of its first question, the same in every language), else the id.
When the few-shot split is the test split (``fewshot_split: null``, XQuAD's default) the
pool is taken from the end of the split and the test items from its start, skipping the
pool's groups: this reads the whole split (benchmark test splits are small).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ROW_KEYS = ("id", "group_id", "split", "input", "question", "options", "label", "reference")
XNLI_OPTIONS = ("True", "Neither", "False")  # labels 0 entailment, 1 neutral, 2 contradiction
XNLI_NAMES = {"entailment": 0, "neutral": 1, "contradiction": 2}
BOOLQ_OPTIONS = ("no", "yes")
_LANGS = ("en", "de", "fr", "es", "ru", "zh", "vi", "ar", "ko", "ja")
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

# A converter turns one dataset row into (key, group, local, content) or None (row skipped,
# e.g. no gold label): ``key`` is the item id within the split, ``group`` its group and
# ``local`` whether that group is split-local (derived from ids) rather than global (a url).
Converted = tuple[str, str, bool, dict[str, Any]] | None
Converter = Callable[[Mapping[str, Any], Mapping[str, str], int, dict], Converted]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's hub layout: where it is, how its rows become task rows."""

    hub_id: str
    task_type: str
    name: str | None  # config name template; ``{lang}`` is the lang_map'ed code
    split: str
    fewshot_split: str | None  # None: the few-shot pool comes from the test split
    lang_map: Mapping[str, str]
    fields: Mapping[str, str]  # role -> the dataset's field
    convert: Converter = field(repr=False)
    optional: tuple[str, ...] = ()  # roles whose field may be absent
    strip_shot_prefix: bool = False  # drop the few-shot inputs' shared "Question:" prefix


def number_text(value: Any) -> str:
    """A numeric answer as text: ``18``, not ``18.0``; thousands separators dropped."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, int):
        return str(value)
    text = str(value).strip().replace(",", "")
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer():
        return str(int(number))
    return text.rstrip("0") if "." in text else text


def _flores(row, f, index, state) -> Converted:
    key = str(row[f["id"]])
    url = row.get(f["group"])
    text = row[f["input"]]
    content = {"input": text, "question": None, "options": None, "label": None}
    return key, str(url) if url else key, not url, content | {"reference": text}


def _xnli(row, f, index, state) -> Converted:
    label = row[f["label"]]
    label = XNLI_NAMES.get(label, label) if isinstance(label, str) else label
    if label not in (0, 1, 2):  # e.g. -1: no gold label
        return None
    content = {
        "input": row[f["input"]],
        "question": row[f["question"]],
        "options": list(XNLI_OPTIONS),
        "label": int(label),
        "reference": XNLI_OPTIONS[label],
    }
    return str(index), str(index), True, content


def _mgsm(row, f, index, state) -> Converted:
    answer = row[f["answer"]]
    if answer is None:
        return None
    content = {"input": row[f["input"]], "question": None, "options": None, "label": None}
    return str(index), str(index), True, content | {"reference": number_text(answer)}


def _boolq(row, f, index, state) -> Converted:
    answer = row[f["label"]]
    if answer is None:
        return None
    if isinstance(answer, str):
        answer = answer.strip().lower() in ("true", "yes", "1")
    label = int(bool(answer))
    content = {
        "input": row[f["input"]],
        "question": row[f["question"]],
        "options": list(BOOLQ_OPTIONS),
        "label": label,
        "reference": BOOLQ_OPTIONS[label],
    }
    return str(index), str(index), True, content


def _xquad(row, f, index, state) -> Converted:
    key = str(row[f["id"]])
    texts = (row[f["answers"]] or {}).get("text") or []
    if not texts:
        return None
    context = row[f["input"]]
    group = "ctx:" + state.setdefault(context, key)  # the context's first question
    content = {
        "input": context,
        "question": row[f["question"]],
        "options": None,
        "label": None,
        "reference": texts[0],
    }
    return key, group, True, content


BENCHMARKS: dict[str, Benchmark] = {
    "flores": Benchmark(
        hub_id="openlanguagedata/flores_plus",
        task_type="translation",
        name="{lang}",
        split="devtest",
        fewshot_split="dev",
        lang_map=FLORES_CODES,
        fields={"id": "id", "input": "text", "group": "url"},
        convert=_flores,
        optional=("group",),
    ),
    "xnli": Benchmark(
        hub_id="facebook/xnli",
        task_type="choice",
        name="{lang}",
        split="test",
        fewshot_split="validation",
        lang_map={lang: lang for lang in _LANGS},
        fields={"input": "premise", "question": "hypothesis", "label": "label"},
        convert=_xnli,
    ),
    "mgsm": Benchmark(
        hub_id="juletxara/mgsm",
        task_type="math",
        name="{lang}",
        split="test",
        fewshot_split="train",
        lang_map={lang: lang for lang in _LANGS},
        fields={"input": "question", "answer": "answer_number"},
        convert=_mgsm,
        strip_shot_prefix=True,
    ),
    "boolq": Benchmark(
        hub_id="google/boolq",
        task_type="choice",
        name=None,
        split="validation",
        fewshot_split="train",
        lang_map={"en": "en"},
        fields={"input": "passage", "question": "question", "label": "answer"},
        convert=_boolq,
    ),
    "xquad": Benchmark(
        hub_id="google/xquad",
        task_type="qa",
        name="xquad.{lang}",
        split="validation",
        fewshot_split=None,
        lang_map={lang: lang for lang in _LANGS},
        fields={"id": "id", "input": "context", "question": "question", "answers": "answers"},
        convert=_xquad,
    ),
}
TASK_TYPES = {key: bench.task_type for key, bench in BENCHMARKS.items()}


@dataclass
class _Source:
    """One opened (dataset, config, split) and how to describe it in errors."""

    benchmark: str
    bench: Benchmark
    dataset: str
    name: str | None
    fields: Mapping[str, str]
    lang: str
    code: str
    per_language: bool

    def where(self, split: str) -> str:
        return f"dataset {self.dataset!r} (config {self.name!r}, split {split!r})"


def _config_names(dataset: str) -> list[str] | None:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(dataset))
    except Exception:  # offline, gated, unreadable: no better message than the original
        return None


def _open(src: _Source, split: str) -> Iterator[Mapping[str, Any]]:
    """Stream ``split``; datasets' exceptions (opening or reading) become one ValueError."""
    import datasets

    kwargs: dict[str, Any] = {"split": split, "streaming": True}
    if src.name is not None:
        kwargs["name"] = src.name
    try:
        stream = datasets.load_dataset(src.dataset, **kwargs)
    except Exception as err:  # datasets raises many types; name the culprit once
        if src.per_language and src.name is not None:
            configs = _config_names(src.dataset)
            if configs is not None and src.name not in configs:
                shown = ", ".join(configs[:30]) + (", ..." if len(configs) > 30 else "")
                raise ValueError(
                    f"language {src.lang!r} (dataset code {src.code!r}) is not in "
                    f"{src.dataset}: it has no config {src.name!r} (configs: {shown}); "
                    f"map the language to one with lang_map"
                ) from err
        raise ValueError(
            f"could not open Hugging Face dataset {src.dataset!r} (config {src.name!r}, "
            f"split {split!r}) for {src.benchmark} language {src.lang!r}: {err}"
        ) from err
    rows = iter(stream)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:
            raise ValueError(f"could not read {src.where(split)}: {err}") from err
        yield row


def _converted(src: _Source, split: str) -> Iterator[tuple[str, str, bool, dict[str, Any]]]:
    """(key, group, local, content) of each usable row of ``split``, in order."""
    state: dict = {}
    for index, row in enumerate(_open(src, split)):
        if index == 0:
            for role, name in src.fields.items():
                if name not in row and role not in src.bench.optional:
                    raise ValueError(
                        f"{src.where(split)} has no field {name!r} (the {src.benchmark} "
                        f"{role}); its fields: {sorted(row)}. Map it with fields: "
                        f"{{{role}: <field>}}"
                    )
        try:
            out = src.bench.convert(row, src.fields, index, state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise ValueError(
                f"{src.where(split)}, row {index}: unexpected value in the {src.benchmark} "
                f"fields {dict(src.fields)}: {err!r}"
            ) from err
        if out is not None:
            yield out


def _first(src: _Source, split: str, n: int) -> list[tuple[str, str, bool, dict[str, Any]]]:
    """The first ``n`` usable rows of ``split`` (reading stops there)."""
    out: list = []
    if n <= 0:
        return out
    for item in _converted(src, split):
        out.append(item)
        if len(out) >= n:
            break
    return out


def _row(split: str, prefix: str, item: tuple[str, str, bool, dict[str, Any]]) -> dict:
    key, group, local, content = item
    return {
        "id": prefix + key,
        "group_id": prefix + group if local else group,
        "split": split,
        **content,
    }


def _strip_shared_prefix(rows: list[dict[str, Any]]) -> None:
    """Drop a prefix ending in a colon that every few-shot input shares ("Question: ")."""
    if len(rows) < 2:
        return
    first, last = min(r["input"] for r in rows), max(r["input"] for r in rows)
    size = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first)
    )
    common = first[:size]
    cut = min((common.find(c) for c in (":", "：") if c in common), default=-1)
    if 0 < cut < 30:
        for r in rows:
            r["input"] = r["input"][cut + 1 :].lstrip()


def _source(spec: Mapping[str, Any], lang: str) -> _Source:
    benchmark = spec.get("benchmark")
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {benchmark!r} (dataset {spec.get('dataset')!r}): use one "
            f"of {sorted(BENCHMARKS)}"
        )
    bench = BENCHMARKS[benchmark]
    lang_map = {**bench.lang_map, **(spec.get("lang_map") or {})}
    code = lang_map.get(lang, lang)
    template = spec.get("name") or bench.name
    dataset = str(spec.get("dataset") or bench.hub_id)
    per_language = "{lang}" in (template or "") or "{lang}" in dataset
    if not per_language and lang not in lang_map:
        raise ValueError(
            f"language {lang!r} is not in {dataset} ({benchmark} has one language set, "
            f"not a config per language: {', '.join(sorted(lang_map))}); give another "
            f"dataset that has it"
        )
    fields = {**bench.fields, **(spec.get("fields") or {})}
    unknown = sorted(set(fields) - set(bench.fields))
    if unknown:
        raise ValueError(
            f"fields {unknown} of dataset {dataset!r}: {benchmark} rows have the roles "
            f"{sorted(bench.fields)}"
        )
    return _Source(
        benchmark=benchmark,
        bench=bench,
        dataset=dataset.format(lang=code) if "{lang}" in dataset else dataset,
        name=template.format(lang=code) if template is not None else None,
        fields=fields,
        lang=lang,
        code=code,
        per_language=per_language,
    )


def read_benchmark(spec: dict, lang: str) -> list[dict]:
    """Rows of one language (keys :data:`ROW_KEYS`): test rows, then few-shot rows.

    ``spec``: ``benchmark`` (a key of :data:`BENCHMARKS`); optional ``dataset`` (hub id or
    local directory, may contain ``{lang}``; default the benchmark's hub id), ``name``
    (config template with ``{lang}``), ``split``, ``fewshot_split`` (None: from the test
    split), ``lang_map`` (our code -> dataset code, merged over the built-in map),
    ``max_items`` (test rows, default 100), ``n_fewshot_pool`` (default 16), ``fields``
    (role -> dataset field, e.g. ``{"input": "sentence"}``). Raises one ``ValueError``
    naming the dataset and the culprit before returning anything (see the module doc).
    """
    src = _source(spec, lang)
    bench = src.bench
    split = spec.get("split") or bench.split
    shot_split = spec["fewshot_split"] if "fewshot_split" in spec else bench.fewshot_split
    max_items = int(spec["max_items"]) if spec.get("max_items") is not None else 100
    n_pool = spec.get("n_fewshot_pool")
    n_pool = 16 if n_pool is None else int(n_pool)
    if shot_split is None or shot_split == split:
        # the pool from the end of the split (at most half of it), the test items from its
        # start, skipping every group the pool uses
        items = list(_converted(src, split)) if n_pool else _first(src, split, max_items)
        pool = items[len(items) - min(n_pool, len(items) // 2) :] if n_pool else []
        pool_groups = {item[1] for item in pool}
        head = [item for item in items[: len(items) - len(pool)] if item[1] not in pool_groups]
        tests = [_row("test", "", item) for item in head[:max_items]]
        shots = [_row("fewshot", "", item) for item in pool]
    else:
        tests = [_row("test", "", item) for item in _first(src, split, max_items)]
        used = {r["group_id"] for r in tests}
        shots = []
        if n_pool and tests:
            for item in _converted(src, shot_split):
                if len(shots) >= n_pool:
                    break
                row = _row("fewshot", f"{shot_split}:", item)
                if row["group_id"] not in used:
                    shots.append(row)
    if not tests:
        raise ValueError(
            f"{src.where(split)}: no {src.benchmark} row for language {lang!r} "
            f"(dataset code {src.code!r}); the split is empty or has no usable row"
        )
    if bench.strip_shot_prefix:
        _strip_shared_prefix(shots)
    log.info(
        "%s/%s: %d test rows, %d few-shot rows from %s",
        src.benchmark,
        lang,
        len(tests),
        len(shots),
        src.dataset,
    )
    return tests + shots

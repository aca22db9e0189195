"""Benchmark loaders (workflow_scripts/tasks/benchmarks.py) on tiny local copies of the hub
layouts (tests/task_fixtures.py), read through ``datasets.load_dataset`` with streaming."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from task_fixtures import (
    rename_column,
    write_boolq,
    write_flores,
    write_mgsm,
    write_xnli,
    write_xquad,
    xquad_id,
)

from workflow_scripts.tasks.benchmarks import (
    BENCHMARKS,
    ROW_KEYS,
    TASK_TYPES,
    number_text,
    read_benchmark,
)

WRITERS = {
    "flores": write_flores,
    "xnli": write_xnli,
    "mgsm": write_mgsm,
    "boolq": lambda root, langs, n=12: write_boolq(root, n),
    "xquad": write_xquad,
}
MULTI = ["flores", "xnli", "mgsm", "xquad"]
# a dataset code that is not the built-in one, for the lang_map override
OTHER_CODE = {"flores": "zho_Hans", "xnli": "zh-CN", "mgsm": "zh-CN", "xquad": "zh-CN"}
TAG = re.compile(r"\[([^\]]+)\]")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bench")
    return {b: w(base / b, ["en", "de"]) for b, w in WRITERS.items()}


def _read(roots, benchmark, lang="en", **spec):
    return read_benchmark({"benchmark": benchmark, "dataset": str(roots[benchmark]), **spec}, lang)


def _split(rows):
    return [r for r in rows if r["split"] == "test"], [r for r in rows if r["split"] == "fewshot"]


def _tag(text):
    return TAG.search(text).group(1)


def _item(text):
    """The item number of a fixture text, without its language tag."""
    return TAG.sub("", text)


def test_task_types_cover_every_benchmark():
    assert set(TASK_TYPES) == set(BENCHMARKS) == {"flores", "xnli", "mgsm", "boolq", "xquad"}
    assert TASK_TYPES == {
        "flores": "translation",
        "xnli": "choice",
        "boolq": "choice",
        "mgsm": "math",
        "xquad": "qa",
    }
    ours = {"en", "de", "fr", "es", "ru", "zh", "vi", "ar", "ko", "ja"}
    for key, bench in BENCHMARKS.items():  # the built-in maps cover the project's languages
        assert set(bench.lang_map) == (ours if key != "boolq" else {"en"}), key
    assert BENCHMARKS["flores"].lang_map["zh"] == "cmn_Hans"


@pytest.mark.parametrize("benchmark", list(WRITERS))
def test_rows_normalised(roots, benchmark):
    rows = _read(roots, benchmark, max_items=4, n_fewshot_pool=3)
    tests, shots = _split(rows)
    assert len(tests) == 4 and 1 <= len(shots) <= 3
    assert rows == tests + shots, "test rows first"
    for r in rows:
        assert tuple(r) == ROW_KEYS
        assert isinstance(r["id"], str) and isinstance(r["group_id"], str)
        assert isinstance(r["input"], str) and isinstance(r["reference"], str)
    first = tests[0]
    if benchmark == "flores":
        assert first["id"] == "1000" and first["input"] == "[eng_Latn] devtest sentence 1000."
        assert first["reference"] == first["input"]
        assert first["group_id"] == "https://en.wikinews.org/wiki/devtest_333"
        assert (first["question"], first["options"], first["label"]) == (None, None, None)
        assert shots[0]["id"] == "dev:0" and "dev sentence 0" in shots[0]["input"]
    elif benchmark == "xnli":
        assert [r["id"] for r in tests] == ["0", "1", "2", "3"]
        assert first["input"] == "[en] test premise 0." and first["question"].endswith("0.")
        assert [r["label"] for r in tests] == [0, 1, 2, 0]
        assert [r["reference"] for r in tests] == ["True", "Neither", "False", "True"]
        assert all(r["options"] == ["True", "Neither", "False"] for r in rows)
        assert shots[0]["id"] == "validation:0" and "validation premise" in shots[0]["input"]
    elif benchmark == "mgsm":
        assert first["input"] == "[en] test problem 0: 4 + 6?"
        assert [r["reference"] for r in tests] == ["10", "11", "12", "13"]
        assert (first["question"], first["options"], first["label"]) == (None, None, None)
        assert shots[0]["id"] == "train:0" and shots[0]["reference"] == "2"
    elif benchmark == "boolq":
        assert first["input"] == "[en] validation passage 0."
        assert first["question"] == "is validation statement 0 true"
        assert [(r["label"], r["reference"]) for r in tests[:2]] == [(0, "no"), (1, "yes")]
        assert all(r["options"] == ["no", "yes"] for r in rows)
        assert shots[0]["id"] == "train:0" and "train passage" in shots[0]["input"]
    else:
        assert [r["id"] for r in tests] == [xquad_id(i) for i in range(4)]
        assert first["input"].startswith("[en] Paragraph 0:")
        assert first["question"] == "[en] What is fact0?" and first["reference"] == "value0"
        assert first["options"] is None and first["label"] is None


@pytest.mark.parametrize("benchmark", MULTI)
def test_ids_aligned_across_languages(roots, benchmark):
    en = _read(roots, benchmark, "en", max_items=5, n_fewshot_pool=3)
    de = _read(roots, benchmark, "de", max_items=5, n_fewshot_pool=3)
    assert [r["id"] for r in en] == [r["id"] for r in de]
    for a, b in zip(en, de, strict=True):
        assert _item(a["input"]) == _item(b["input"]), "the same id is the same item"
        assert _tag(a["input"]) != _tag(b["input"]), "in another language"
        assert a["reference"] is not None and a["label"] == b["label"]
    # XQuAD's groups name the context by its first question id: the same in every language
    assert [r["group_id"] for r in en] == [r["group_id"] for r in de]


@pytest.mark.parametrize("benchmark", list(WRITERS))
@pytest.mark.parametrize("max_items", [1, 5, 100])
def test_test_rows_at_most_max_items(roots, benchmark, max_items):
    tests, shots = _split(_read(roots, benchmark, max_items=max_items, n_fewshot_pool=2))
    assert 1 <= len(tests) <= max_items and len(shots) <= 2
    assert len({r["id"] for r in tests}) == len(tests)


@pytest.mark.parametrize("benchmark", list(WRITERS))
def test_fewshot_never_shares_a_group_or_id_with_a_test_row(roots, benchmark):
    tests, shots = _split(_read(roots, benchmark, max_items=6, n_fewshot_pool=16))
    assert shots, "a pool is found"
    assert not {r["group_id"] for r in tests} & {r["group_id"] for r in shots}
    assert not {r["id"] for r in tests} & {r["id"] for r in shots}
    assert not {r["input"] for r in tests} & {r["input"] for r in shots}


def test_flores_fewshot_skips_the_test_items_groups(roots):
    """Grouped by a field that dev and devtest share (the domain), shots of a test group go."""
    rows = _read(roots, "flores", max_items=2, n_fewshot_pool=16, fields={"group": "domain"})
    tests, shots = _split(rows)
    assert {r["group_id"] for r in tests} == {"wikinews"}  # devtest article 333: 333 % 3 = 0
    assert shots and all(r["group_id"] in ("wikivoyage", "wikibooks") for r in shots)
    assert [r["id"] for r in shots] == ["dev:3", "dev:4", "dev:5", "dev:6", "dev:7", "dev:8"]


def test_flores_without_url_groups_by_id(tmp_path):
    root = write_flores(tmp_path / "f", ["en"])
    tests, shots = _split(_read({"flores": root}, "flores", max_items=2, fields={"group": "x"}))
    assert [r["group_id"] for r in tests] == ["1000", "1001"]
    assert shots[0]["group_id"] == "dev:0"


def test_xquad_pool_from_the_end_in_whole_contexts(roots):
    """One split: the pool is its last rows, and no test item shares a context with it."""
    tests, shots = _split(_read(roots, "xquad", max_items=100, n_fewshot_pool=4))
    assert [r["id"] for r in shots] == [xquad_id(i) for i in range(8, 12)]
    # questions 6, 7 share context 2 with the pool's question 8: neither test nor shot
    assert [r["id"] for r in tests] == [xquad_id(i) for i in range(6)]
    tests, shots = _split(_read(roots, "xquad", max_items=2, n_fewshot_pool=4))
    assert [r["id"] for r in shots] == [xquad_id(i) for i in range(8, 12)], "max_items-free"
    assert [r["id"] for r in tests] == [xquad_id(0), xquad_id(1)]


def test_fewshot_split_none_takes_the_test_splits_tail(roots):
    tests, shots = _split(_read(roots, "xnli", max_items=100, n_fewshot_pool=3, fewshot_split=None))
    assert [r["id"] for r in shots] == ["9", "10", "11"]
    assert [r["id"] for r in tests] == [str(i) for i in range(9)]
    assert all("test premise" in r["input"] for r in shots)
    tests, shots = _split(_read(roots, "xnli", max_items=4, n_fewshot_pool=0))
    assert len(tests) == 4 and shots == []


@pytest.mark.parametrize("benchmark", MULTI)
def test_lang_map_override(tmp_path, benchmark):
    root = WRITERS[benchmark](tmp_path / benchmark, ["en", OTHER_CODE[benchmark]])
    spec = {"benchmark": benchmark, "dataset": str(root), "max_items": 3}
    rows = read_benchmark({**spec, "lang_map": {"zh": OTHER_CODE[benchmark]}}, "zh")
    assert rows and all(_tag(r["input"]) == OTHER_CODE[benchmark] for r in rows)
    assert read_benchmark({**spec, "lang_map": {"zh": OTHER_CODE[benchmark]}}, "en"), "merged"
    with pytest.raises(ValueError, match=r"language 'zh' \(dataset code '[^']+'\) is not in"):
        read_benchmark(spec, "zh")  # the built-in code is not in this copy


def test_boolq_lang_map_admits_another_language(roots):
    rows = _read(roots, "boolq", "de", max_items=2, lang_map={"de": "de"})
    assert len(_split(rows)[0]) == 2


def test_config_name_template_override(roots):
    rows = _read(roots, "xquad", "de", name="xquad.{lang}", max_items=1, n_fewshot_pool=0)
    assert rows[0]["input"].startswith("[de]")
    with pytest.raises(ValueError, match=r"language 'de' \(dataset code 'de'\).*'squad\.de'"):
        _read(roots, "xquad", "de", name="squad.{lang}")


@pytest.mark.parametrize(
    ("benchmark", "role"),
    [
        ("flores", "input"),
        ("xnli", "question"),
        ("mgsm", "answer"),
        ("boolq", "label"),
        ("xquad", "answers"),
    ],
)
def test_missing_field_names_it_and_lists_the_fields(roots, benchmark, role):
    with pytest.raises(ValueError, match=r"has no field 'sentence'.*its fields: \[") as err:
        _read(roots, benchmark, fields={role: "sentence"})
    assert str(roots[benchmark]) in str(err.value) and role in str(err.value)


@pytest.mark.parametrize(
    ("benchmark", "old", "field"),
    [("boolq", "passage", "passage"), ("xnli", "premise", "premise")],
)
def test_renamed_column_in_the_files(tmp_path, benchmark, old, field):
    root = WRITERS[benchmark](tmp_path / benchmark, ["en"])
    rename_column(root, old, "text")
    with pytest.raises(ValueError, match=rf"no field '{field}'.*'text'"):
        _read({benchmark: root}, benchmark)
    rows = _read({benchmark: root}, benchmark, fields={"input": "text"}, max_items=2)
    assert rows[0]["input"].startswith("[en]")


def test_unknown_field_role_is_refused(roots):
    with pytest.raises(ValueError, match=r"fields \['passage'\].*roles"):
        _read(roots, "xnli", fields={"passage": "premise"})


@pytest.mark.parametrize(
    ("benchmark", "lang", "pattern"),
    [
        ("boolq", "de", r"language 'de' is not in .*boolq.*: en\)"),
        ("flores", "fr", r"language 'fr' \(dataset code 'fra_Latn'\) is not in .*flores"),
        ("xnli", "ko", r"language 'ko' \(dataset code 'ko'\) is not in .*xnli"),
        ("mgsm", "vi", r"language 'vi' \(dataset code 'vi'\) is not in .*mgsm"),
        ("xquad", "ja", r"language 'ja' \(dataset code 'ja'\) is not in .*xquad"),
    ],
)
def test_language_the_benchmark_lacks(roots, benchmark, lang, pattern):
    with pytest.raises(ValueError, match=pattern):
        _read(roots, benchmark, lang)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match=r"unknown benchmark 'nli'.*'xnli'"):
        read_benchmark({"benchmark": "nli", "dataset": "x/y"}, "en")


def test_cannot_open_names_dataset_config_and_split(roots, tmp_path):
    with pytest.raises(ValueError, match=r"could not open .*config 'deu_Latn', split 'test'"):
        _read(roots, "flores", "de", split="test")
    with pytest.raises(ValueError, match=r"could not open .*split 'training'"):
        _read(roots, "xnli", fewshot_split="training")
    # the default dataset is the hub id; the tests run offline, so it cannot be reached
    with pytest.raises(ValueError, match=r"'openlanguagedata/flores_plus' \(config 'eng_Latn'"):
        read_benchmark({"benchmark": "flores"}, "en")


def test_unreadable_file_is_a_clear_error(tmp_path):
    root = write_xnli(tmp_path / "x", ["en"])
    (root / "en" / "test-00000-of-00001.parquet").write_bytes(b"garbage" * 50)
    with pytest.raises(ValueError, match=r"'test'"):
        _read({"xnli": root}, "xnli")


def _relabel(root: Path, labels: list[int]) -> None:
    path = root / "en" / "test-00000-of-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(2, "label", pa.array(labels, pa.int64())), path)


def test_rows_without_gold_label_are_skipped_ids_keep_positions(tmp_path):
    root = write_xnli(tmp_path / "x", ["en"], n=4)
    _relabel(root, [0, -1, 2, 1])
    tests = _split(_read({"xnli": root}, "xnli", max_items=10))[0]
    assert [(r["id"], r["label"]) for r in tests] == [("0", 0), ("2", 2), ("3", 1)]


def test_zero_rows_is_an_error(tmp_path):
    root = write_xnli(tmp_path / "x", ["en"], n=3)
    _relabel(root, [-1, -1, -1])
    with pytest.raises(ValueError, match=r"split 'test'.*no xnli row for language 'en'"):
        _read({"xnli": root}, "xnli")


def test_mgsm_exemplar_prefixes_are_removed(tmp_path):
    root = write_mgsm(tmp_path / "m", ["en", "de", "zh"])
    for lang, tag in (("en", "[en]"), ("de", "[de]"), ("zh", "[zh]")):
        shots = _split(_read({"mgsm": root}, "mgsm", lang, max_items=1))[1]
        assert len(shots) == 8, "the 8 exemplars"
        assert all(r["input"].startswith(f"{tag} exemplar") for r in shots), shots[0]["input"]


def test_number_text():
    assert [number_text(v) for v in (18, 18.0, "18.0", "1,000", 2.5, "2.50", " 7 ")] == [
        "18",
        "18",
        "18",
        "1000",
        "2.5",
        "2.5",
        "7",
    ]
    with pytest.raises(ValueError):
        number_text(True)


def test_reading_stops_after_the_rows_needed(roots, monkeypatch):
    import datasets

    real = datasets.load_dataset
    pulled = []

    def counting(*args, **kwargs):
        assert kwargs["streaming"] is True, "hub datasets are streamed, never downloaded whole"
        stream = real(*args, **kwargs)

        def rows():
            for row in stream:
                pulled.append(kwargs["split"])
                yield row

        return rows()

    monkeypatch.setattr(datasets, "load_dataset", counting)
    tests, shots = _split(_read(roots, "xnli", max_items=3, n_fewshot_pool=2))
    assert (len(tests), len(shots)) == (3, 2)
    assert pulled.count("test") <= 4 and pulled.count("validation") <= 3


def test_rows_fit_the_task_table(roots):
    """build_task writes the rows with its schema (options list, label int, None fields)."""
    from workflow_scripts.tasks.build import build_task

    for benchmark in WRITERS:
        spec = {"source": "huggingface", "benchmark": benchmark, "dataset": str(roots[benchmark])}
        table = build_task({**spec, "max_items": 3, "n_fewshot_pool": 2}, "en", None, name="t")
        assert table.num_rows >= 4 and table.column_names == list(ROW_KEYS)

"""Corpus preparation: cleaning, splitting, every source kind, and the error messages."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BUNDLED

from workflow_scripts.data import corpus as corpus_mod
from workflow_scripts.data.corpus import (
    CORPUS_COLUMNS,
    clean,
    corpus_texts,
    load_corpus,
    prepare_corpus,
    read_source,
    split_of,
)
from workflow_scripts.io import read_metadata, read_parquet, write_parquet

LONG = "a sentence that is certainly longer than twenty characters"


def _recs(texts):
    return [{"text": t, "doc_id": f"d{i}"} for i, t in enumerate(texts)]


# ---------------------------------------------------------------------------------- clean


def test_clean_normalises_whitespace():
    out = list(clean(_recs(["  hello \t\n  world\u00a0again  ", None]), 0, 100))
    assert [r["text"] for r in out] == ["hello world again", ""]
    assert out[0]["doc_id"] == "d0", "other fields are kept"


def test_clean_min_max_chars_drop_not_truncate():
    texts = ["x" * 4, "x" * 5, "y" * 10, "z" * 11]
    out = [r["text"] for r in clean(_recs(texts), min_chars=5, max_chars=10)]
    assert out == ["x" * 5, "y" * 10]


def test_clean_dedup_after_normalisation():
    texts = [LONG, LONG + "  ", "  " + LONG.replace(" ", "\n"), LONG + "!"]
    out = list(clean(_recs(texts), 0, 1000))
    assert [r["doc_id"] for r in out] == ["d0", "d3"], "first occurrence kept"


def test_clean_max_docs_counts_kept_documents():
    texts = ["short", LONG + "1", "short", LONG + "1", LONG + "2", LONG + "3", LONG + "4"]
    out = list(clean(_recs(texts), 20, 1000, max_docs=2))
    assert [r["text"] for r in out] == [LONG + "1", LONG + "2"]


def test_clean_max_docs_stops_reading_early():
    pulled = []

    def source():
        for i in range(10_000):
            pulled.append(i)
            yield {"text": f"{LONG} {i}"}

    out = list(clean(source(), 0, 1000, max_docs=3))
    assert len(out) == 3
    # at most one record beyond the last kept one is pulled from the source
    assert len(pulled) <= 4


# ---------------------------------------------------------------------------------- split


def test_split_of_deterministic_and_fraction():
    ids = [f"doc-{i}" for i in range(10_000)]
    first = [split_of(i, 0.1) for i in ids]
    assert first == [split_of(i, 0.1) for i in ids]
    share = first.count("eval") / len(ids)
    assert 0.085 < share < 0.115
    assert set(first) == {"train", "eval"}
    share3 = [split_of(i, 0.3) for i in ids].count("eval") / len(ids)
    assert 0.28 < share3 < 0.32
    # monotone in the fraction: an eval id at 0.1 stays eval at 0.3
    assert all(split_of(i, 0.3) == "eval" for i, s in zip(ids, first, strict=True) if s == "eval")


def test_split_is_by_group(tmp_path):
    """Documents of one group are never split between train and eval."""
    bundled = tmp_path / "b.parquet"
    rows = defaultdict(list)
    for g in range(200):
        for k in range(3):
            rows["item_id"].append(f"g{g}#{k}")
            rows["lang"].append("en")
            rows["text"].append(f"{LONG} group {g} item {k}")
            rows["source"].append("s")
            rows["license"].append("MIT")
            rows["group_id"].append(f"g{g}")
    write_parquet(dict(rows), bundled)
    out = tmp_path / "en.parquet"
    prepare_corpus({"source": "bundled", "path": str(bundled), "eval_fraction": 0.3}, "en", out)
    t = read_parquet(out).to_pydict()
    by_group = defaultdict(set)
    for g, s in zip(t["group_id"], t["split"], strict=True):
        by_group[g].add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert {next(iter(s)) for s in by_group.values()} == {"train", "eval"}
    assert all(by_group[g] == {split_of(g, 0.3)} for g in by_group)


# ------------------------------------------------------------------------- bundled corpus


def test_prepare_bundled_fr(tmp_path):
    out = tmp_path / "corpus" / "fr.parquet"
    n = prepare_corpus({"source": "bundled", "path": str(BUNDLED)}, "fr", out, name="bundled")
    t = read_parquet(out)
    assert t.column_names == CORPUS_COLUMNS
    assert t.num_rows == n > 1000
    d = t.to_pydict()
    assert set(d["split"]) == {"train", "eval"}
    assert 0.03 < d["split"].count("eval") / n < 0.3
    assert len(set(d["doc_id"])) == n
    assert len(set(d["text"])) == n, "deduplicated"
    assert all(20 <= len(x) <= 20000 for x in d["text"])
    assert all(x == " ".join(x.split()) for x in d["text"][:500])
    by_group = defaultdict(set)
    for g, s in zip(d["group_id"], d["split"], strict=True):
        by_group[g].add(s)
    assert all(len(s) == 1 for s in by_group.values())
    meta = read_metadata(out)
    assert meta["corpus"] == "bundled" and meta["lang"] == "fr"
    assert meta["n_eval"] == d["split"].count("eval")
    assert load_corpus(out, "eval").num_rows == meta["n_eval"]
    assert load_corpus(out).num_rows == n


def test_bundled_doc_ids_align_across_languages(tmp_path):
    spec = {"source": "bundled", "path": str(BUNDLED)}
    prepare_corpus(spec, "en", tmp_path / "en.parquet")
    prepare_corpus(spec, "zh", tmp_path / "zh.parquet")
    en = read_parquet(tmp_path / "en.parquet").to_pydict()
    zh = read_parquet(tmp_path / "zh.parquet").to_pydict()
    shared = set(en["doc_id"]) & set(zh["doc_id"])
    assert len(shared) > 1000
    split_en = dict(zip(en["doc_id"], en["split"], strict=True))
    split_zh = dict(zip(zh["doc_id"], zh["split"], strict=True))
    assert all(split_en[d] == split_zh[d] for d in shared), "aligned docs share their split"


def test_bundled_missing_language_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"'it' is not in the bundled corpus") as err:
        prepare_corpus({"source": "bundled", "path": str(BUNDLED)}, "it", tmp_path / "it.parquet")
    assert "fr" in str(err.value), "lists the languages it has"
    assert not (tmp_path / "it.parquet").exists()


def test_empty_after_cleaning_names_corpus_and_language(tmp_path):
    out = tmp_path / "fr.parquet"
    spec = {"source": "bundled", "path": str(BUNDLED), "min_chars": 19000, "max_chars": 19001}
    with pytest.raises(ValueError) as err:
        prepare_corpus(spec, "fr", out, name="mycorpus")
    msg = str(err.value)
    assert "'mycorpus'" in msg and "'fr'" in msg and "min_chars=19000" in msg
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "no temporary file left behind either"


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown corpus source 'ftp'"):
        read_source({"source": "ftp"}, "en")


# --------------------------------------------------------------------------- local files


def test_local_txt_lines(tmp_path):
    for lang in ("en", "fr"):
        (tmp_path / f"{lang}.txt").write_text(
            f"{LONG} {lang} one\n\n  {LONG} {lang} two  \nshort\n{LONG} {lang} one\n",
            encoding="utf-8",
        )
    spec = {"source": "local", "path": str(tmp_path / "{lang}.txt")}
    out = tmp_path / "out" / "fr.parquet"
    assert prepare_corpus(spec, "fr", out, name="loc") == 2
    t = read_parquet(out).to_pydict()
    assert t["text"] == [f"{LONG} fr one", f"{LONG} fr two"]
    assert t["doc_id"] == ["fr.txt:0", "fr.txt:2"]
    assert t["source"] == [str(tmp_path / "fr.txt")] * 2
    assert t["group_id"] == t["doc_id"]


def test_local_txt_paragraphs(tmp_path):
    (tmp_path / "de.txt").write_text(
        f"{LONG}\nsecond line of the same paragraph\n\n{LONG} two\n\nshort\n", encoding="utf-8"
    )
    spec = {"source": "local", "path": str(tmp_path / "{lang}.txt"), "txt_unit": "paragraph"}
    assert prepare_corpus(spec, "de", tmp_path / "o.parquet") == 2
    t = read_parquet(tmp_path / "o.parquet").to_pydict()
    assert t["text"] == [f"{LONG} second line of the same paragraph", f"{LONG} two"]


def test_local_jsonl(tmp_path):
    d = tmp_path / "es"
    d.mkdir()
    with open(d / "docs.jsonl", "w", encoding="utf-8") as f:
        for i in range(5):
            f.write(json.dumps({"body": f"{LONG} número {i}", "other": i}) + "\n")
        f.write("\n")
    spec = {
        "source": "local",
        "path": str(tmp_path / "{lang}" / "docs.jsonl"),
        "text_field": "body",
    }
    assert prepare_corpus(spec, "es", tmp_path / "o.parquet") == 5
    t = read_parquet(tmp_path / "o.parquet").to_pydict()
    assert t["text"][0] == f"{LONG} número 0"
    assert t["doc_id"] == [f"docs.jsonl:{i}" for i in range(5)]


def test_local_parquet_with_max_docs(tmp_path):
    pq.write_table(
        pa.table({"text": [f"{LONG} {i}" for i in range(50)], "x": list(range(50))}),
        tmp_path / "ru.parquet",
    )
    spec = {"source": "local", "path": str(tmp_path / "{lang}.parquet"), "max_docs": 7}
    assert prepare_corpus(spec, "ru", tmp_path / "out" / "ru.parquet") == 7


def test_local_missing_file(tmp_path):
    spec = {"source": "local", "path": str(tmp_path / "{lang}.txt")}
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "ko.txt"))):
        prepare_corpus(spec, "ko", tmp_path / "o.parquet")


def test_local_unsupported_suffix(tmp_path):
    (tmp_path / "en.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\.txt, \.jsonl or \.parquet"):
        prepare_corpus({"source": "local", "path": str(tmp_path / "{lang}.csv")}, "en", "o")


# ------------------------------------------------------------------------- corrupt files


def test_corrupt_parquet(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all" * 10)
    with pytest.raises(ValueError, match="not a readable Parquet file") as err:
        read_parquet(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_corpus(bad)
    truncated = tmp_path / "trunc.parquet"
    write_parquet({"doc_id": ["a"], "text": ["b"]}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(ValueError, match=re.escape(str(truncated))):
        read_parquet(truncated)


def test_read_parquet_missing_file_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet"):
        read_parquet(tmp_path / "nope.parquet")
    p = tmp_path / "c.parquet"
    write_parquet({"doc_id": ["a"], "text": ["b"]}, p)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['split'"):
        load_corpus(p)


def test_load_corpus_empty_split(corpus_writer):
    p = corpus_writer("en", [{"text": LONG, "split": "train"}])
    assert load_corpus(p, "train").num_rows == 1
    with pytest.raises(ValueError, match="no documents in split 'eval'"):
        load_corpus(p, "eval")


def test_corpus_texts_streams_one_split(corpus_writer):
    a = corpus_writer("a", [{"text": "a1", "split": "train"}, {"text": "a2", "split": "eval"}])
    b = corpus_writer("b", [{"text": "b1", "split": "train"}, {"text": "b2", "split": "train"}])
    assert list(corpus_texts([a, b])) == ["a1", "b1", "b2"]
    assert list(corpus_texts([a, b], "eval")) == ["a2"]


# ---------------------------------------------------------------------- Hugging Face (local)


def _wikipedia_like(root: Path, langs=("fr", "en"), n=40, bad_shard=False) -> Path:
    """A local directory laid out like the hub's wikimedia/wikipedia repository."""
    configs = []
    for lang in langs:
        d = root / f"20231101.{lang}"
        d.mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    "id": [str(100 + i) for i in range(n)],
                    "url": [f"https://{lang}.wikipedia.org/wiki?curid={100 + i}" for i in range(n)],
                    "title": [f"Title {i}" for i in range(n)],
                    "text": [f"{lang}: {LONG} article {i}" for i in range(n)],
                }
            ),
            d / ("train-00000-of-00002.parquet" if bad_shard else "train-00000-of-00001.parquet"),
        )
        if bad_shard:  # a second shard that cannot be read: reading all of it would fail
            (d / "train-00001-of-00002.parquet").write_bytes(b"garbage" * 100)
        configs.append(
            f"- config_name: 20231101.{lang}\n  data_files:\n"
            f"  - split: train\n    path: 20231101.{lang}/train-*\n"
        )
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n# test\n")
    return root


def _oscar_like(root: Path, langs=("fr", "en"), n=30, bad_file=False) -> Path:
    for lang in langs:
        d = root / f"{lang}_meta"
        d.mkdir(parents=True)
        with open(d / f"{lang}_part_1.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                rec = {"id": i, "content": f"{lang} {LONG} {i}", "warc_headers": {"x": str(i)}}
                f.write(json.dumps(rec) + "\n")
        if bad_file:
            (d / f"{lang}_part_2.jsonl").write_text("{not json at all\n" * 10)
    return root


WIKI_SPEC = {
    "source": "huggingface",
    "name": "20231101.{lang}",
    "split": "train",
    "text_field": "text",
    "id_field": "id",
}


def test_huggingface_wikipedia_layout(tmp_path):
    root = _wikipedia_like(tmp_path / "wikipedia")
    spec = {**WIKI_SPEC, "dataset": str(root), "max_docs": 25}
    out = tmp_path / "out" / "fr.parquet"
    assert prepare_corpus(spec, "fr", out, name="wiki") == 25
    t = read_parquet(out).to_pydict()
    assert t["doc_id"][:2] == [f"{root}:100", f"{root}:101"]
    assert all(x.startswith("fr: ") for x in t["text"])
    assert t["source"] == [str(root)] * 25
    assert t["group_id"] == t["doc_id"]
    prepare_corpus(spec, "en", tmp_path / "out" / "en.parquet", name="wiki")
    assert read_parquet(tmp_path / "out" / "en.parquet")["text"][0].as_py().startswith("en: ")


def test_huggingface_oscar_layout(tmp_path):
    root = _oscar_like(tmp_path / "oscar")
    spec = {
        "source": "huggingface",
        "dataset": str(root),
        "data_files": "{lang}_meta/*.jsonl",
        "text_field": "content",
        "max_docs": 10,
    }
    out = tmp_path / "en.parquet"
    assert prepare_corpus(spec, "en", out) == 10
    t = read_parquet(out).to_pydict()
    assert t["text"][0] == f"en {LONG} 0"
    assert t["doc_id"][:2] == [f"{root}:0", f"{root}:1"], "no id_field: row number"


def test_huggingface_lang_map(tmp_path):
    root = _oscar_like(tmp_path / "oscar", langs=("zh-Hans",), n=5)
    spec = {
        "source": "huggingface",
        "dataset": str(root),
        "data_files": "{lang}_meta/*.jsonl",
        "text_field": "content",
        "lang_map": {"zh": "zh-Hans"},
    }
    assert prepare_corpus(spec, "zh", tmp_path / "zh.parquet") == 5


def test_huggingface_max_docs_stops_reading_early(tmp_path):
    """The unreadable second shard/file is never opened when max_docs is reached first."""
    wiki = _wikipedia_like(tmp_path / "wiki", langs=("fr",), bad_shard=True)
    spec = {**WIKI_SPEC, "dataset": str(wiki)}
    assert prepare_corpus({**spec, "max_docs": 10}, "fr", tmp_path / "w.parquet") == 10
    with pytest.raises(ValueError):  # pyarrow.ArrowInvalid: reading everything hits the garbage
        prepare_corpus(spec, "fr", tmp_path / "w_all.parquet")
    assert not (tmp_path / "w_all.parquet").exists()

    oscar = _oscar_like(tmp_path / "oscar", langs=("fr",), bad_file=True)
    spec = {
        "source": "huggingface",
        "dataset": str(oscar),
        "data_files": "{lang}_meta/*.jsonl",
        "text_field": "content",
    }
    assert prepare_corpus({**spec, "max_docs": 10}, "fr", tmp_path / "o.parquet") == 10
    with pytest.raises(ValueError):
        prepare_corpus(spec, "fr", tmp_path / "o_all.parquet")


def test_huggingface_rows_pulled_bounded_by_max_docs(tmp_path, monkeypatch):
    import datasets

    root = _wikipedia_like(tmp_path / "wiki", langs=("fr",), n=200)
    real = datasets.load_dataset
    pulled = []

    def counting(*args, **kwargs):
        assert kwargs["streaming"] is True, "hub datasets are streamed, never downloaded whole"
        stream = real(*args, **kwargs)

        def gen():
            for row in stream:
                pulled.append(row["id"])
                yield row

        return gen()

    monkeypatch.setattr(datasets, "load_dataset", counting)
    assert (
        prepare_corpus({**WIKI_SPEC, "dataset": str(root), "max_docs": 5}, "fr", tmp_path / "x")
        == 5
    )
    assert len(pulled) <= 6


def test_huggingface_missing_text_field(tmp_path):
    root = _oscar_like(tmp_path / "oscar", langs=("fr",), n=3)
    spec = {
        "source": "huggingface",
        "dataset": str(root),
        "data_files": "{lang}_meta/*.jsonl",
        "text_field": "text",
    }
    with pytest.raises(ValueError, match=r"no text field 'text'.*content"):
        prepare_corpus(spec, "fr", tmp_path / "fr.parquet")
    assert not (tmp_path / "fr.parquet").exists()


def test_huggingface_unknown_config_names_dataset(tmp_path):
    root = _wikipedia_like(tmp_path / "wiki", langs=("fr",))
    with pytest.raises(ValueError, match="could not open Hugging Face dataset") as err:
        prepare_corpus({**WIKI_SPEC, "dataset": str(root)}, "de", tmp_path / "de.parquet")
    assert str(root) in str(err.value) and "20231101.de" in str(err.value)


def test_readers_registry():
    assert set(corpus_mod.READERS) == {"bundled", "huggingface", "local"}

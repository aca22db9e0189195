"""Translation through a real OpenAI-compatible HTTP server on the loopback address.

Every test starts :class:`openai_server.FakeOpenAI` (127.0.0.1, port 0, a hard
lifetime) and goes through the real ``openai`` client: faults (429 with
Retry-After, 500, a hung request hitting the client timeout, malformed JSON, an
empty choice, an empty content), budgets, a killed run resumed, bad input, and
the API key never written anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import BUNDLED, REPO
from openai_server import FakeOpenAI

from workflow_scripts.config import schema_defaults
from workflow_scripts.data.prompts import (
    parallel_prompts,
    pim_prompt,
    pim_prompts,
    translated_documents,
)
from workflow_scripts.io import read_metadata
from workflow_scripts.translation.cache import TranslationCache, cache_key
from workflow_scripts.translation.client import backoff_delay, build_messages, retry_after
from workflow_scripts.translation.errors import TranslationError
from workflow_scripts.translation.run import COLUMNS, translate_dataset
from workflow_scripts.translation.settings import settings_with_defaults, validate_sections
from workflow_scripts.translation.sources import load_items

KEY = "sk-loopback-SECRET-0123456789abcdef"
ENV = "LOOPBACK_TEST_KEY"
TARGETS = ("fr", "zh")


def aligned_rows(n: int, langs=("en", *TARGETS)) -> list[dict[str, str]]:
    """``n`` bundled items present in every language of ``langs`` (id -> texts), by id."""
    table = pq.read_table(BUNDLED, columns=["item_id", "lang", "text"]).to_pylist()
    texts: dict[str, dict[str, str]] = {}
    for row in table:
        texts.setdefault(row["item_id"], {})[row["lang"]] = row["text"]
    rows = []
    for item_id in sorted(texts):
        t = texts[item_id]
        if all(lang in t and 40 <= len(t[lang]) <= 300 for lang in langs):
            rows.append({"id": item_id, **{lang: t[lang] for lang in langs}})
        if len(rows) == n:
            return rows
    raise AssertionError("not enough aligned items")


def write_dataset(tmp_path: Path, n: int, langs=("en", *TARGETS)) -> tuple[dict, dict]:
    """A local JSON-lines dataset of ``n`` English items, its spec and the server references."""
    rows = aligned_rows(n, langs)
    path = tmp_path / "source.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({"uid": row["id"], "sentence": row["en"]}) + "\n")
    spec = {
        "source": "local",
        "path": str(path),
        "text_field": "sentence",
        "id_field": "uid",
        "source_lang": "en",
        "languages": list(langs[1:]),
        "max_items": n,
    }
    refs = {row["en"]: {lang: row[lang] for lang in langs[1:]} for row in rows}
    return spec, refs


def translate_cli(cfg_file, lang: str, *options: str) -> list[str]:
    """The translation CLI on dataset ``demo`` of ``cfg_file``."""
    cmd = [sys.executable, "-m", "workflow_scripts.translation", "--config", str(cfg_file)]
    return [*cmd, "--dataset", "demo", "--lang", lang, *options]


def settings(server: FakeOpenAI, **over) -> dict:
    base = {
        "model": "fake-translator",
        "base_url": server.base_url,
        "api_key_env": ENV,
        "timeout": 0.5,
        "concurrency": 4,
        "max_retries": 4,
        "backoff": 0.02,
        "max_backoff": 0.1,
    }
    return {**base, **over}


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)


@pytest.fixture
def make_server():
    servers: list[FakeOpenAI] = []

    def factory(**kwargs) -> FakeOpenAI:
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("lifetime", 60)
        server = FakeOpenAI(**kwargs).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def run(tmp_path: Path, spec: dict, lang: str, s: dict, **kw) -> dict:
    out = tmp_path / "out" / f"{lang}.parquet"
    return translate_dataset(
        "demo",
        spec,
        lang,
        s,
        out,
        tmp_path / "out" / f"{lang}.report.json",
        tmp_path / "cache" / f"{lang}.jsonl",
        progress=False,
        **kw,
    )


def assert_key_absent(root: Path, *texts: str) -> None:
    """The key is in no file under ``root`` and in none of ``texts``."""
    needle = KEY.encode()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert needle not in path.read_bytes(), path
    for text in texts:
        assert KEY not in text


# ----------------------------------------------------------------------------- units


def test_cache_survives_a_torn_line_and_is_locked(tmp_path):
    path = tmp_path / "c.jsonl"
    with TranslationCache(path) as cache:
        cache.add({"key": "a", "text": "A"})
        with pytest.raises(TranslationError, match="locked"):
            TranslationCache(path)
    with path.open("ab") as fh:
        fh.write(b'{"key": "b", "te')  # a crash in the middle of a line
    with TranslationCache(path) as cache:
        assert set(cache.entries) == {"a"} and cache.skipped == 1
        cache.add({"key": "c", "text": "C"})
    with TranslationCache(path) as cache:
        assert set(cache.entries) == {"a", "c"} and cache.skipped == 1


def test_cache_key_covers_model_prompt_text_and_language():
    base = cache_key("m", "v1", "hello", "fr")
    assert len(base) == 64
    others = [
        cache_key("m2", "v1", "hello", "fr"),
        cache_key("m", "v2", "hello", "fr"),
        cache_key("m", "v1", "hello!", "fr"),
        cache_key("m", "v1", "hello", "de"),
    ]
    assert base not in others and len(set(others)) == 4


def test_retry_after_and_backoff():
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after({"retry-after": date}) <= 30
    assert retry_after({}) is None and retry_after({"retry-after": "soon"}) is None
    import random

    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 10.0, rng) for a in range(8)]
    assert all(0.5 * min(10, 2**a) <= d <= min(10, 2**a) for a, d in enumerate(delays))


def test_messages_fill_the_template():
    s = settings_with_defaults({"system_prompt": "sys"})
    msgs = build_messages(s, "Hello there.", "en", "zh")
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert msgs[1]["content"].endswith(
        "into Chinese. Reply with the translation only.\n\nHello there."
    )


# ----------------------------------------------------------------------------- runs


def test_clean_run_then_everything_cached(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 10)
    server = make_server(references=refs)
    report = run(tmp_path, spec, "fr", settings(server))
    table = pq.read_table(tmp_path / "out" / "fr.parquet")
    assert table.column_names == COLUMNS
    rows = table.to_pylist()
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    assert all(r["text"] == refs[r["source_text"]]["fr"] for r in rows)
    assert all(r["lang_ok"] and r["detected_lang"] == "fr" for r in rows)
    assert {r["translator"] for r in rows} == {"fake-translator"}
    assert all(r["finish_reason"] == "stop" and r["completion_tokens"] > 0 for r in rows)
    assert report["translated"] == 10 and report["calls"] == 10 and report["failed"] == []
    assert server.n_paid == 10 and server.duplicates() == 0
    meta = read_metadata(tmp_path / "out" / "fr.parquet")
    assert meta["rows"] == 10 and meta["lang_ok"] == 10
    # a second run pays nothing and needs no server at all
    server.stop()
    report2 = run(tmp_path, spec, "fr", settings(server))
    assert report2["cached"] == 10 and report2["calls"] == 0
    assert pq.read_table(tmp_path / "out" / "fr.parquet").to_pylist() == rows


def test_every_fault_kind_is_retried_without_loss_or_duplicate(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 10)
    texts = list(refs)
    plan = [
        ["429"],
        ["500", "500"],
        ["hang"],
        ["malformed"],
        ["empty"],
        ["blank"],
        ["429", "malformed", "hang"],
    ]
    schedule = {(texts[i], "zh"): kinds for i, kinds in enumerate(plan)}
    server = make_server(references=refs, schedule=schedule, hang_seconds=1.5)
    t0 = time.monotonic()
    report = run(tmp_path, spec, "zh", settings(server))
    assert time.monotonic() - t0 < 10
    rows = pq.read_table(tmp_path / "out" / "zh.parquet").to_pylist()
    assert len(rows) == 10 and all(r["text"] == refs[r["source_text"]]["zh"] for r in rows)
    assert all(r["lang_ok"] for r in rows)
    n_faults = sum(len(k) for k in plan)
    assert server.n_requests == 10 + n_faults and server.n_paid == 10
    assert server.duplicates() == 0 and report["calls"] == 10 + n_faults
    retries = report["retries"]
    assert retries["429"] == 2 and retries["500"] == 2 and retries["timeout"] == 2
    assert retries["malformed"] == 4  # malformed JSON x2, no choice, empty content


def test_retry_after_is_honoured(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 1)
    text = next(iter(refs))
    server = make_server(
        references=refs, schedule={(text, "fr"): ["429"]}, retry_after="1", retry_after_ms=None
    )
    t0 = time.monotonic()
    run(tmp_path, spec, "fr", settings(server))
    assert 1.0 <= time.monotonic() - t0 < 3
    assert server.n_requests == 2 and server.n_paid == 1


def test_random_faults_lose_nothing(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 40)
    server = make_server(
        references=refs, fault_rate=0.2, seed=3, hang_seconds=1.0, retry_after_ms=10
    )
    report = run(tmp_path, spec, "fr", settings(server, concurrency=8, timeout=0.3, max_retries=8))
    assert report["rows"] == 40 and report["failed"] == []
    assert server.n_paid == 40 and server.duplicates() == 0
    assert sum(server.faults.values()) == server.n_requests - 40 > 0


def test_persistent_bad_replies_are_reported_never_written(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 4)
    bad = next(iter(refs))
    schedule = {(bad, "fr"): ["malformed", "empty", "blank", "blank"]}
    server = make_server(references=refs, schedule=schedule)
    with pytest.raises(TranslationError, match=r"1 item\(s\) failed .*run again") as err:
        run(tmp_path, spec, "fr", settings(server, max_retries=2))
    assert "gave up after 3 attempts" in str(err.value)
    assert not (tmp_path / "out" / "fr.parquet").exists()
    cached = [json.loads(line) for line in (tmp_path / "cache" / "fr.jsonl").open()]
    assert len(cached) == 3 and all(r["text"] for r in cached)
    # allowed to fail: the table is written without it, the report names it
    report = run(tmp_path, spec, "fr", settings(server, max_retries=0, max_failed=1))
    assert report["rows"] == 3 and report["failed"][0]["error"].startswith("gave up")
    assert report["calls"] == 1
    assert bad not in pq.read_table(tmp_path / "out" / "fr.parquet")["source_text"].to_pylist()
    # the next run retries only the failed item
    report = run(tmp_path, spec, "fr", settings(server))
    assert report["calls"] == 1 and report["rows"] == 4
    assert server.n_paid == 4 and server.duplicates() == 0


def test_budget_stops_cleanly_and_the_next_run_continues(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 12)
    server = make_server(references=refs)
    msg = r"budget.max_items=5 reached: 5 of 12 items are translated and cached"
    with pytest.raises(TranslationError, match=msg):
        run(tmp_path, spec, "fr", settings(server, budget={"max_items": 5}))
    assert not (tmp_path / "out" / "fr.parquet").exists() and server.n_paid == 5
    with pytest.raises(TranslationError, match=r"budget.max_tokens=1 reached"):
        run(tmp_path, spec, "fr", settings(server, concurrency=2, budget={"max_tokens": 1}))
    assert server.n_paid == 7  # the two calls in flight when the budget was hit
    report = run(tmp_path, spec, "fr", settings(server))
    assert report["cached"] == 7 and report["translated"] == 5 and report["rows"] == 12
    assert server.n_paid == 12 and server.duplicates() == 0


def test_source_language_table_is_the_source(tmp_path, make_server):
    spec, _ = write_dataset(tmp_path, 5)
    server = make_server()
    report = run(tmp_path, spec, "en", settings(server))
    rows = pq.read_table(tmp_path / "out" / "en.parquet").to_pylist()
    assert [r["text"] for r in rows] == [r["source_text"] for r in rows]
    assert {r["translator"] for r in rows} == {"source"} and report["calls"] == 0
    assert server.n_requests == 0


def test_wrong_language_and_length_outliers_are_flagged_not_dropped(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 8)
    texts = list(refs)
    refs[texts[0]]["fr"] = texts[0]  # "translated" into English
    refs[texts[1]]["fr"] = refs[texts[1]]["fr"] * 4  # far too long
    server = make_server(references=refs)
    report = run(tmp_path, spec, "fr", settings(server))
    rows = {r["source_text"]: r for r in pq.read_table(tmp_path / "out" / "fr.parquet").to_pylist()}
    assert len(rows) == 8 and report["lang_ok"] == 7 and report["length_outliers"] >= 1
    assert rows[texts[0]]["detected_lang"] == "en" and not rows[texts[0]]["lang_ok"]
    assert rows[texts[1]]["length_outlier"] and rows[texts[1]]["length_ratio"] > 2
    assert not rows[texts[2]]["length_outlier"]


# ----------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_paid_call(tmp_path, make_server, monkeypatch):
    spec, refs = write_dataset(tmp_path, 3)
    server = make_server(references=refs)
    s = settings(server)
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        run(tmp_path, spec, "xx", s)
    with pytest.raises(ValueError, match="'de' is not one of its languages"):
        run(tmp_path, spec, "de", s)
    with pytest.raises(ValueError, match=r"has no field 'body' \(fields: \['sentence', 'uid'\]\)"):
        run(tmp_path, {**spec, "text_field": "body"}, "fr", s)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path, {**spec, "path": str(tmp_path / "nope.jsonl")}, "fr", s)
    monkeypatch.delenv(ENV)
    with pytest.raises(TranslationError, match=f"environment variable {ENV} .* is not set"):
        run(tmp_path, spec, "fr", s)
    monkeypatch.setenv(ENV, "sk-wrong-key")
    with pytest.raises(TranslationError, match="rejected the API key") as err:
        run(tmp_path, spec, "fr", s)
    assert "sk-wrong-key" not in str(err.value)
    assert server.n_requests == 0  # no chat call at all (only the free model list)
    monkeypatch.setenv(ENV, KEY)
    closed = FakeOpenAI(api_key=KEY).start()
    url = closed.base_url
    closed.stop()
    t0 = time.monotonic()
    with pytest.raises(TranslationError, match="unreachable"):
        run(tmp_path, spec, "fr", {**s, "base_url": url})
    assert time.monotonic() - t0 < 5
    assert_key_absent(tmp_path)


def test_bundled_source_is_the_prepared_corpus_split_in_hash_order(tmp_path):
    from workflow_scripts.data.corpus import doc_rank, documents, prepare_corpus

    prepared = tmp_path / "ko.parquet"
    prepare_corpus({"source": "bundled", "path": str(BUNDLED)}, "ko", prepared)
    spec = {"source": "bundled", "source_lang": "ko", "languages": ["en"], "max_items": 30}
    items = load_items(spec)
    eval_docs = documents(prepared, "eval", max_chars=2000)
    assert [it.id for it in items] == sorted(eval_docs, key=doc_rank)[:30]
    assert all(eval_docs[it.id] == it.text for it in items)


def test_huggingface_source_streams_and_checks_the_text_field(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    rows = [{"premise": f"Sentence number {i} is long enough to keep.", "n": i} for i in range(9)]
    (hub / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "source": "huggingface",
        "dataset": str(hub),
        "text_field": "premise",
        "source_lang": "en",
        "languages": ["fr"],
        "max_items": 5,
    }
    items = load_items(spec, "hubset")
    assert [it.text for it in items] == [r["premise"] for r in rows[:5]]  # stream order, cut
    assert items[0].id == f"{hub}:0"
    with pytest.raises(ValueError, match="has no text field 'text'"):
        load_items({**spec, "text_field": "text"}, "hubset")


def test_schema_checks_the_sections():
    validate_sections(
        {
            "datasets": {
                "d": {
                    "source": "local",
                    "source_lang": "en",
                    "languages": ["fr"],
                    "path": "x.jsonl",
                }
            }
        }
    )
    with pytest.raises(ValueError, match="'path' is a required property"):
        validate_sections(
            {"datasets": {"d": {"source": "local", "source_lang": "en", "languages": ["fr"]}}}
        )
    with pytest.raises(ValueError, match="concurrency"):
        validate_sections({"translation": {"concurrency": 0}})


# ----------------------------------------------------------------------------- kill + resume


def test_killed_run_resumes_and_pays_each_item_once(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 30)
    server = make_server(references=refs, latency=0.01, hold_after=12)
    cfg = {"translation": settings(server, concurrency=4), "datasets": {"demo": spec}}
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out" / "fr.parquet"
    cache = tmp_path / "cache" / "fr.jsonl"
    cmd = translate_cli(cfg_file, "fr", "--out", str(out), "--cache", str(cache))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    logs = []
    with (tmp_path / "run1.log").open("w") as log1:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log1, stderr=log1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every paid reply delivered and persisted
            lines = cache.read_text().count("\n") if cache.exists() else 0
            if lines >= 12 and server.n_requests >= 16:  # and 4 more held in flight
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert cache.read_text().count("\n") == 12 and not out.exists()
    held = server.n_requests - server.n_paid
    server.hold_after = None
    proc2 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    logs.append(proc2.stdout + proc2.stderr)
    assert proc2.returncode == 0, logs[-1][-3000:]
    assert "12 of 30 items cached" in logs[-1]
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 30 and all(r["text"] == refs[r["source_text"]]["fr"] for r in rows)
    assert server.n_paid == 30 and server.duplicates() == 0
    assert all(n == 1 for n in server.paid.values())
    assert server.n_requests == 30 + held  # the calls cut by the kill were never answered
    assert_key_absent(tmp_path, *logs)


def test_sigterm_finishes_the_calls_in_flight_then_stops(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 40)
    server = make_server(references=refs, latency=0.05)
    cfg = {"translation": settings(server, concurrency=4), "datasets": {"demo": spec}}
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    cache = tmp_path / "cache.jsonl"
    cmd = translate_cli(cfg_file, "zh", "--cache", str(cache), "--no-progress")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not cache.exists() or cache.read_text().count("\n") < 8):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 1, err[-2000:]
    assert "interrupted: " in err and "Run again to continue" in err
    n_cached = cache.read_text().count("\n")
    assert 8 <= n_cached < 40 and server.n_paid == n_cached  # every paid reply was kept
    proc2 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert server.n_paid == 40 and server.duplicates() == 0
    assert_key_absent(tmp_path, err, proc2.stderr)


# ----------------------------------------------------------------------------- parallel input


def test_pim_prompt_template():
    got = pim_prompt("Hello.", {"fr": "Bonjour.", "de": "Hallo."}, "en")
    assert got == "French: Bonjour.\nGerman: Hallo.\nEnglish: Hello."
    got = pim_prompt(
        "Hi",
        {"zh": "你好"},
        "en",
        "Q ({source_lang}): {source}\nT:\n{translations}",
        "[{lang}] {text}",
    )
    assert got == "Q (en): Hi\nT:\n[zh] 你好"


def test_translated_tables_feed_parallel_and_pim_prompts(tmp_path, make_server):
    spec, refs = write_dataset(tmp_path, 6)
    texts = list(refs)
    refs[texts[0]]["zh"] = texts[0]  # fails the language check in zh
    server = make_server(references=refs)
    tables = {}
    for lang in ("en", "fr", "zh"):
        run(tmp_path, spec, lang, settings(server))
        tables[lang] = tmp_path / "out" / f"{lang}.parquet"
    assert len(translated_documents(tables["zh"])) == 5
    assert len(translated_documents(tables["zh"], skip_flagged=False)) == 6
    prompts = parallel_prompts(tables, 10, max_chars=1000, source="translated")
    assert len(prompts) == 5 and texts[0] not in "".join(prompts)
    first = prompts[0].split("\n")
    assert [line.split(":")[0] for line in first] == ["English", "French", "Chinese"]
    pims = pim_prompts(tables, 10, k=1, max_chars=1000, source="translated")
    assert len(pims) == 6  # the flagged zh row does not matter with k=1 (en + fr)
    assert all(p.startswith("French: ") and "\nEnglish: " in p for p in pims)
    pims2 = pim_prompts(tables, 2, max_chars=1000, source="translated", prefix_fraction=0.5)
    src_line = pims2[0].split("\n")[-1]
    assert src_line.startswith("English: ") and any(src_line[9:] in t for t in texts)
    with pytest.raises(ValueError, match="pim_k=3"):
        pim_prompts(tables, 2, k=3, source="translated")


def test_parallel_condition_counts_from_translated_tables(
    tmp_path, make_server, tiny_model, tiny_tokenizer
):
    from workflow_scripts.neurons.actcount import count_condition

    spec, refs = write_dataset(tmp_path, 4)
    server = make_server(references=refs)
    corpora = {}
    for lang in ("fr", "en"):
        run(tmp_path, spec, lang, settings(server))
        corpora[lang] = str(tmp_path / "out" / f"{lang}.parquet")
    s = schema_defaults("actcount") | {
        "n_prompts": 3,
        "positions": "all",
        "max_length": 64,
        "parallel_source": "translated:demo",
    }
    model = tiny_model("qwen2")
    for builder in ("concat", "pim"):
        counts, meta = count_condition(
            model, tiny_tokenizer, "parallel", corpora, {**s, "parallel_builder": builder}
        )
        assert counts.n_positions[0] > 0
        assert meta["parallel_source"] == "translated:demo"
        assert meta["parallel_builder"] == builder and meta["languages"] == ["en", "fr"]
        assert counts.count_table()["n_positions"][0].as_py() > 0

"""Translation through Snakemake: the ``translate`` rule against the loopback OpenAI server,
the key passed only through the environment, and the parallel condition wired to it."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import BUNDLED, run_snakemake
from openai_server import FakeOpenAI
from test_config import TINY
from test_translate import ENV, KEY, assert_key_absent, write_dataset

pytestmark = pytest.mark.slow

TARGETS = [f"results/translated/demo/{lang}.parquet" for lang in ("fr", "zh")]


def workflow_config(spec: dict, base_url: str, **actcount) -> dict:
    return {
        "languages": ["en", "fr"],
        "corpora": {"bundled": {"source": "bundled", "path": str(BUNDLED)}},
        "models": {"tq": {"corpus": "bundled", "tiny": dict(TINY)}},
        "actcount": {"parallel_languages": ["fr", "en"], **actcount},
        "translation": {
            "model": "fake-translator",
            "base_url": base_url,
            "api_key_env": ENV,
            "timeout": 0.5,
            "concurrency": 4,
            "backoff": 0.02,
            "max_backoff": 0.1,
            "max_retries": 8,
        },
        "datasets": {"demo": spec},
    }


@pytest.fixture
def server_and_spec(tmp_path):
    spec, refs = write_dataset(tmp_path, 12)
    server = FakeOpenAI(
        references=refs,
        api_key=KEY,
        fault_rate=0.2,
        seed=1,
        hang_seconds=1.0,
        retry_after_ms=10,
        lifetime=120,
    ).start()
    yield server, spec
    server.stop()


def test_translate_rule_against_the_loopback_server(tmp_path, server_and_spec, monkeypatch):
    server, spec = server_and_spec
    monkeypatch.setenv(ENV, KEY)
    workdir = tmp_path / "work"
    cfg = workflow_config(spec, server.base_url)
    proc, out = run_snakemake(workdir, cfg, *TARGETS, timeout=300)
    assert proc.returncode == 0, out[-4000:]
    for target in TARGETS:
        table = pq.read_table(workdir / target).to_pylist()
        assert len(table) == 12 and all(r["lang_ok"] for r in table)
    assert (workdir / "results/translated/demo/fr.report.json").exists()
    assert (workdir / "results/translated/.cache/demo/fr.jsonl").read_text().count("\n") == 12
    assert (workdir / "results/logs/translate/demo/zh.log").exists()
    assert server.n_paid == 24 and server.duplicates() == 0 and sum(server.faults.values()) > 0
    # nothing to do again; the key is in no file of the run (logs, metadata, cache, tables)
    proc2, out2 = run_snakemake(workdir, cfg, *TARGETS, "-n", timeout=300)
    assert proc2.returncode == 0 and "Nothing to be done" in out2, out2[-3000:]
    assert_key_absent(tmp_path, out, out2)


def test_missing_key_fails_before_any_call(tmp_path, server_and_spec, monkeypatch):
    server, spec = server_and_spec
    monkeypatch.delenv(ENV, raising=False)
    workdir = tmp_path / "work"
    proc, out = run_snakemake(workdir, workflow_config(spec, server.base_url), TARGETS[1])
    assert proc.returncode != 0
    assert f"the environment variable {ENV} (translation.api_key_env) is not set" in out
    assert server.n_requests == 0 and not (workdir / TARGETS[1]).exists()


def test_parallel_condition_reads_the_translated_dataset(tmp_path, server_and_spec):
    _, spec = server_and_spec
    workdir = tmp_path / "work"
    target = "results/activations/tq/parallel.parquet"
    cfg = workflow_config(spec, "http://127.0.0.1:9/v1", parallel_source="translated:demo")
    proc, out = run_snakemake(workdir, cfg, target, "-n", timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "results/translated/demo/fr.parquet" in out
    assert "results/translated/demo/en.parquet" in out
    assert "translate" in out.split("Job stats:", 1)[1]
    bad = workflow_config(
        spec,
        "http://127.0.0.1:9/v1",
        parallel_source="translated:demo",
        parallel_languages=["fr", "de"],
    )
    proc, out = run_snakemake(workdir, bad, target, "-n", timeout=300)
    assert proc.returncode != 0 and "['de'] are not languages of dataset 'demo'" in out

"""Translation robustness and speed against the loopback OpenAI server, with injected faults.

    python bench/translate_loopback.py                # 500 items x 3 languages, 20% faults

Builds a local dataset of ``--items`` English paragraphs of the bundled corpus
that exist in every target language, serves their bundled translations from
``tests/openai_server.py`` (a real HTTP server on 127.0.0.1 speaking the
chat-completions API) with ``--fault-rate`` of the requests failing (429 with
Retry-After, 500, a hang past the client timeout, malformed JSON, no choice,
empty content; uniformly) and ``--latency`` per request, then

1. translates every language at concurrency 1 and at concurrency 8 (fresh
   caches), one language after the other as Snakemake jobs would run:
   items lost, duplicate paid calls, calls, wall time;
2. runs the translation CLI in a subprocess per language, kills it at a
   random moment once about half of the items are cached, and runs it again:
   calls and paid calls in total against items. SIGKILL (nothing can run) can
   lose the replies that arrived in the last milliseconds before being
   persisted: they are paid again (at most ``concurrency`` per kill); SIGTERM
   (what a cancelled Snakemake job gets) lets the calls in flight finish and
   persist first.

A duplicate paid call is a second successful (200, non-empty) reply for an item
that already had one. Never run two benchmarks at the same time on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from openai_server import FakeOpenAI  # noqa: E402

from workflow_scripts.translation.run import translate_dataset  # noqa: E402

KEY = "sk-bench-loopback-key"
ENV = "BENCH_LOOPBACK_KEY"


def aligned_dataset(tmp: Path, n: int, langs: list[str]) -> tuple[dict, dict]:
    """A local JSON-lines dataset of ``n`` English items present in every language; the spec
    and the server's references (source text -> lang -> bundled translation)."""
    table = pq.read_table(
        REPO / "resources/corpus/bundled.parquet", columns=["item_id", "lang", "text"]
    )
    texts: dict[str, dict[str, str]] = {}
    for row in table.to_pylist():
        texts.setdefault(row["item_id"], {})[row["lang"]] = row["text"]
    rows = [
        (i, t)
        for i, t in sorted(texts.items())
        if all(lang in t and 20 <= len(t[lang]) <= 2000 for lang in ["en", *langs])
    ]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} aligned items, asked for {n}")
    rows = rows[:n]
    path = tmp / "source.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t["en"]}) + "\n" for i, t in rows))
    spec = {
        "source": "local",
        "path": str(path),
        "id_field": "id",
        "source_lang": "en",
        "languages": langs,
        "max_items": n,
    }
    refs = {t["en"]: {lang: t[lang] for lang in langs} for _, t in rows}
    return spec, refs


def settings(base_url: str, concurrency: int, timeout: float) -> dict:
    return {
        "model": "fake-translator",
        "base_url": base_url,
        "api_key_env": ENV,
        "concurrency": concurrency,
        "timeout": timeout,
        "max_retries": 10,
        "backoff": 0.05,
        "max_backoff": 1.0,
    }


def server_for(refs: dict, args: argparse.Namespace) -> FakeOpenAI:
    return FakeOpenAI(
        references=refs,
        api_key=KEY,
        fault_rate=args.fault_rate,
        seed=args.seed,
        latency=args.latency,
        hang_seconds=args.timeout + 1.0,
        retry_after_ms=50,
        lifetime=3600,
    ).start()


def speed_run(tmp: Path, spec: dict, refs: dict, concurrency: int, args) -> dict:
    server = server_for(refs, args)
    rows = lang_ok = 0
    t0 = time.monotonic()
    try:
        for lang in spec["languages"]:
            out = tmp / f"c{concurrency}" / f"{lang}.parquet"
            report = translate_dataset(
                "bench",
                spec,
                lang,
                settings(server.base_url, concurrency, args.timeout),
                out,
                out.with_suffix(".report.json"),
                tmp / f"c{concurrency}" / "cache" / f"{lang}.jsonl",
                progress=False,
            )
            rows += report["rows"]
            lang_ok += report["lang_ok"]
        wall = time.monotonic() - t0
    finally:
        server.stop()
    expected = len(refs) * len(spec["languages"])
    return {
        "concurrency": concurrency,
        "items": expected,
        "rows_written": rows,
        "items_lost": expected - rows,
        "lang_ok": lang_ok,
        "requests": server.n_requests,
        "paid_calls": server.n_paid,
        "duplicate_paid_calls": server.duplicates(),
        "faults": dict(server.faults),
        "wall_seconds": round(wall, 1),
    }


def kill_resume(tmp: Path, spec: dict, refs: dict, args, sig: signal.Signals) -> dict:
    """Per language: run the CLI, send ``sig`` once about half of the items are cached, resume."""
    server = server_for(refs, args)
    cfg = {"translation": settings(server.base_url, 8, args.timeout), "datasets": {"bench": spec}}
    cfg_file = tmp / "kill.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(args.seed)
    kills = []
    rows = 0
    try:
        for lang in spec["languages"]:
            out = tmp / sig.name / f"{lang}.parquet"
            cache = tmp / sig.name / "cache" / f"{lang}.jsonl"
            cmd = [
                sys.executable,
                "-m",
                "workflow_scripts.translation",
                "--config",
                str(cfg_file),
                "--dataset",
                "bench",
                "--lang",
                lang,
                "--out",
                str(out),
                "--cache",
                str(cache),
                "--no-progress",
            ]
            at = int(len(refs) * rng.uniform(0.3, 0.7))
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while proc.poll() is None:
                if cache.exists() and cache.read_text().count("\n") >= at:
                    break
                time.sleep(0.005)
            proc.send_signal(sig)
            code = proc.wait()
            cached = cache.read_text().count("\n")
            requests_before = server.n_requests
            resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if resumed.returncode:
                raise SystemExit(resumed.stderr[-2000:])
            rows += pq.read_table(out).num_rows
            kills.append(
                {
                    "lang": lang,
                    "exit_code": code,
                    "cached_at_kill": cached,
                    "requests_after_resume": server.n_requests - requests_before,
                }
            )
    finally:
        server.stop()
    expected = len(refs) * len(spec["languages"])
    return {
        "signal": sig.name,
        "items": expected,
        "rows_written": rows,
        "items_lost": expected - rows,
        "requests": server.n_requests,
        "paid_calls": server.n_paid,
        "duplicate_paid_calls": server.duplicates(),
        "kills": kills,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--langs", default="de,fr,zh")
    ap.add_argument("--fault-rate", type=float, default=0.2)
    ap.add_argument("--latency", type=float, default=0.02, help="server seconds per request")
    ap.add_argument("--timeout", type=float, default=0.5, help="client timeout (hangs cost this)")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    os.environ[ENV] = KEY
    results: dict = {"settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="translate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        spec, refs = aligned_dataset(tmp, args.items, args.langs.split(","))
        for c in [int(c) for c in args.concurrency.split(",")]:
            res = speed_run(tmp, spec, refs, c, args)
            results[f"concurrency_{c}"] = res
            print(json.dumps(res), flush=True)
        for sig in (signal.SIGKILL, signal.SIGTERM):
            res = kill_resume(tmp, spec, refs, args, sig)
            results[f"kill_resume_{sig.name}"] = res
            print(json.dumps(res), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

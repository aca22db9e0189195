"""Pieces shared by the bench scripts: arguments, texts, timing."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyarrow.compute as pc
import torch

from workflow_scripts.io import read_parquet


def parser(
    doc: str, lang: str, docs: int, max_length: int, batch_size: int
) -> argparse.ArgumentParser:
    """Arguments every bench script takes (model, corpus, sizes, rounds, threads)."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="results/models/gemma")
    ap.add_argument(
        "--corpus", default="resources/corpus/bundled.parquet", help="bundled-format Parquet"
    )
    ap.add_argument("--lang", default=lang)
    ap.add_argument("--docs", type=int, default=docs)
    ap.add_argument("--max-length", type=int, default=max_length)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    return ap


def texts_of(corpus: str, lang: str, n: int) -> list[str]:
    """The first ``n`` texts of ``lang`` in a bundled-format corpus, shortest first."""
    table = read_parquet(corpus, ["lang", "text"])
    return sorted(table.filter(pc.equal(table["lang"], lang))["text"].to_pylist()[:n], key=len)


def timed(fn: Callable[[], None]) -> float:
    """Seconds one call of ``fn`` takes under inference mode."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - t0


def alternate(a: Callable[[], None], b: Callable[[], None], rounds: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, timed in alternating rounds after a warm-up of ``a``,
    so machine noise hits both sides alike."""
    timed(a)
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(timed(a))
        times_b.append(timed(b))
    return statistics.median(times_a), statistics.median(times_b)

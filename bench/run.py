"""Every throughput check in one process: one model, one set of tokens, one table.

    python bench/run.py                                  # Gemma 3 270M, 128 and 256 tokens
    python bench/run.py --lengths 128 --rounds 5
    python bench/run.py --readme README.md               # also rewrite the README's section

Per length, the documents are the language's corpus texts joined and cut into windows
of exactly that many tokens (as long corpus documents are truncated by the jobs), so
every row below sees the same tokens. Each stage is timed in rounds that alternate with
its baseline (the median round counts), so machine noise hits both alike:

- trunk forward: ``model.base_model`` (no head, no hooks), the baseline of the
  activation statistics and PLND; forward with head: the full model, logits for every
  position, the baseline of perplexity;
- activation counting (all positions; LAPE's statistics are the same pass), and during
  greedy generation of 16 tokens (baseline: the same ``generate`` without hooks; tokens/s
  are new tokens), PLND FFN only, PLND all five parts (FFN, Q, K, V, O), perplexity
  (head on the valid positions);
- ratio = baseline time / stage time (1.0 = free), memory = the stage's peak resident
  memory above the process's before it (sampled every 5 ms);
- PLND's speed-up over the direct definition: zeroing one FFN neuron and re-running its
  MLP per neuron (timed on a sample, extrapolated to all neurons and batches).

``--memory``: PLND statistics (all five parts) over N and 4N documents of the corpus, each
in a fresh process, and their peak resident memory: bounded memory means the two are close.

Never run two benchmarks (or other busy jobs) at once on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from common import alternate, texts_of, timed

from workflow_scripts.models.anatomy import ffn_sites, mlp_sites
from workflow_scripts.models.hooks import activation_hooks
from workflow_scripts.models.loading import load_model
from workflow_scripts.neurons.actcount import ActivationCounts, _Recorder
from workflow_scripts.neurons.plnd import PARTS, plnd_scores

START, END = "<!-- bench/run.py: start -->", "<!-- bench/run.py: end -->"
TARGETS = {
    "counting": 0.95,
    "counting_generated": 0.9,
    "plnd_ffn": 0.95,
    "plnd_all": 0.3,
    "perplexity": 0.9,
}
BASELINES = {"counting_generated": "generate", "perplexity": "forward with head"}


class PeakMemory:
    """Peak resident memory (MiB) above the level at entry, sampled by a thread."""

    def __init__(self, every: float = 0.005) -> None:
        self.every, self.peak = every, 0.0

    @staticmethod
    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.every)

    def __enter__(self) -> PeakMemory:
        self.base, self._stop = self.rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def windows(tokenizer, texts: list[str], length: int, n: int) -> torch.Tensor:
    """``[n, length]`` token ids: the texts joined and cut into windows of ``length``."""
    ids = tokenizer("\n\n".join(texts), return_tensors="pt")["input_ids"][0]
    if ids.numel() < n * length:
        raise SystemExit(f"the corpus has {ids.numel()} tokens, fewer than {n} x {length}")
    return ids[: n * length].reshape(n, length)


def compare(base: Callable, stage: Callable, rounds: int) -> tuple[float, float, float]:
    """Median seconds of ``base`` and ``stage`` over alternating rounds (after one warm-up
    of each) and the stage's peak memory above the process's level (MiB)."""
    with PeakMemory() as mem:  # the stage's warm-up
        timed(stage)
    return *alternate(base, stage, rounds), mem.peak


def direct_ffn_seconds(model, batch: dict, sample: int = 16) -> float:
    """Seconds for the direct FFN definition on one batch: zero one neuron's column of the
    down projection, re-run the first layer's MLP, per neuron (sampled, extrapolated)."""
    site = mlp_sites(model)[0]
    captured = {}
    handle = site.mlp.register_forward_pre_hook(lambda _m, a: captured.__setitem__("x", a[0]))
    with torch.inference_mode():
        model.base_model(**batch)
    handle.remove()
    x, w = captured["x"], site.down.weight
    t0 = time.perf_counter()
    with torch.inference_mode():
        base = site.mlp(x)
        for k in range(sample):
            saved = w[:, k].clone()
            w[:, k] = 0
            (site.mlp(x) - base).norm(dim=-1)
            w[:, k] = saved
    return (time.perf_counter() - t0) / sample * sum(s.size for s in mlp_sites(model))


def bench_length(model, tok, texts, length: int, args) -> list[dict]:
    ids = windows(tok, texts, length, args.docs)
    batches = [
        {
            "input_ids": ids[i : i + args.batch_size],
            "attention_mask": torch.ones_like(ids[i : i + args.batch_size]),
        }
        for i in range(0, len(ids), args.batch_size)
    ]
    docs = tok.batch_decode(ids)
    n_tokens = ids.numel()
    sites = ffn_sites(model)

    def trunk() -> None:
        for b in batches:
            model.base_model(**b)

    def with_head() -> None:
        for b in batches:
            model(**b)

    def counting() -> None:
        counts = ActivationCounts.empty(sites)
        for b in batches:
            rec = _Recorder(counts, "all", set())
            rec.mask = b["attention_mask"].bool()
            with activation_hooks(sites, rec):
                model.base_model(**b)
            rec.finish()

    def plnd(parts: tuple[str, ...]) -> Callable:
        return lambda: [
            plnd_scores(model, b["input_ids"], b["attention_mask"], parts=parts) for b in batches
        ]

    prompts = docs[: args.batch_size]
    enc = tok(
        prompts,
        return_tensors="pt",
        padding=True,
        padding_side="left",
        truncation=True,
        max_length=64,
    )
    gen_kwargs = dict(
        max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id
    )

    def generate() -> None:
        model.generate(**enc, **gen_kwargs)

    def generate_count() -> None:
        rec = _Recorder(ActivationCounts.empty(sites), "generated", {tok.eos_token_id})
        pre = model.register_forward_pre_hook(rec.pre_forward, with_kwargs=True)
        try:
            with activation_hooks(sites, rec):
                model.generate(**enc, **gen_kwargs)
        finally:
            pre.remove()
        rec.finish()

    def ppl() -> None:
        from workflow_scripts.evaluation.perplexity import perplexity

        perplexity(model, tok, docs, max_length=length, batch_size=args.batch_size)

    stages = [
        ("counting", "activation counting (= LAPE statistics)", trunk, counting),
        (
            "counting_generated",
            "activation counting, 16 generated tokens",
            generate,
            generate_count,
        ),
        ("plnd_ffn", "PLND, FFN", trunk, plnd(("ffn",))),
        ("plnd_all", "PLND, FFN+Q+K+V+O", trunk, plnd(PARTS)),
        ("perplexity", "perplexity", with_head, ppl),
    ]
    rows, direct = [], None
    for key, name, base, stage in stages:
        if key not in args.stages:
            continue
        tb, ts, mem = compare(base, stage, args.rounds)
        row = {
            "length": length,
            "stage": name,
            "baseline": BASELINES.get(key, "trunk forward"),
            "tokens_s": (16 * len(prompts) if base is generate else n_tokens) / ts,
            "base_tokens_s": (16 * len(prompts) if base is generate else n_tokens) / tb,
            "ratio": tb / ts,
            "target": TARGETS[key],
            "mem_mib": mem,
            "speedup": None,
        }
        if key in ("plnd_ffn", "plnd_all"):
            if direct is None:  # once per length, for both PLND rows
                direct = direct_ffn_seconds(model, batches[0]) * len(batches)
            row["speedup"] = direct / ts
        rows.append(row)
        print(
            f"{length:5d} {name:42s} {row['tokens_s']:8.1f} tok/s  ratio {row['ratio']:.3f}"
            f" (target {row['target']})  +{mem:.0f} MiB",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| tokens | stage | tokens/s | baseline tokens/s | ratio (target) | peak memory | x direct zeroing |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ok = "" if r["ratio"] >= r["target"] else " **below**"
        speedup = "" if r["speedup"] is None else f"x{r['speedup']:,.0f}"
        lines.append(
            f"| {r['length']} | {r['stage']} | {r['tokens_s']:.0f} | {r['base_tokens_s']:.0f} "
            f"({r['baseline']}) | {r['ratio']:.3f} (>= {r['target']}){ok} | +{r['mem_mib']:.0f} MiB | {speedup} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = (
        "AVX-512"
        if torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        else torch.backends.cpu.get_cpu_capability()
    )
    return f"{cpu} ({flags}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
        return out.stdout.strip() + ("+changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rewrite_readme(path: Path, text: str) -> None:
    readme = path.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"{path}: no {START} ... {END} section to rewrite")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def memory_child(args: argparse.Namespace, n_docs: int) -> None:
    """Peak RSS (MiB) of one process that runs ``plnd_stats`` over ``n_docs`` documents."""
    import resource

    from workflow_scripts.neurons.selection import plnd_stats

    model, tok = load_model(args.model, threads=args.threads)
    settings = {"variant": "paper", "parts": list(PARTS), "top_fraction": 0.1,
                "batch_size": args.batch_size, "max_length": max(args.lengths)}  # fmt: skip
    plnd_stats(model, tok, texts_of(args.corpus, args.lang, n_docs), settings)
    print(
        f"{n_docs} docs: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


def memory(args: argparse.Namespace) -> None:
    for n in (args.docs, 4 * args.docs):
        cmd = [sys.executable, __file__, "--model", args.model, "--corpus", args.corpus, "--lang", args.lang,
               "--lengths", str(max(args.lengths)), "--batch-size", str(args.batch_size), "--memory-child", str(n)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="results/models/gemma")
    ap.add_argument("--corpus", default="resources/corpus/bundled.parquet")
    ap.add_argument("--lang", default="fr")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--docs", type=int, default=8, help="windows per length")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stages", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--readme", type=Path, default=None, help="rewrite this file's bench section")
    ap.add_argument("--memory", action="store_true", help="PLND peak memory at N and 4N docs")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        return memory_child(args, args.memory_child)
    if args.memory:
        return memory(args)

    model, tok = load_model(args.model, threads=args.threads)
    texts = texts_of(args.corpus, args.lang, 10**6)
    print(
        f"model {args.model}, {args.lang}, {args.docs} windows per length, batch {args.batch_size}; {machine()}"
    )
    rows = [r for length in args.lengths for r in bench_length(model, tok, texts, length, args)]
    summary = (
        f"`python bench/run.py` on {date.today().isoformat()}, commit {commit()}, {machine()}; "
        f"model `{args.model}`, {args.docs} windows of {args.lang} text per length, batch {args.batch_size}, "
        f"median of {args.rounds} alternating rounds:\n\n{table(rows)}"
    )
    print("\n" + summary)
    if args.readme:
        rewrite_readme(args.readme, summary)


if __name__ == "__main__":
    main()

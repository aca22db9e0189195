"""PLND all-neuron importance vs a plain forward pass, and vs one-at-a-time zeroing.

    python bench/plnd_throughput.py --model results/models/gemma --docs 8
    python bench/plnd_throughput.py --model results/models/gemma --memory   # peak RSS, 1x vs 4x docs

Same model, same tokens, same run; rounds alternate and the median is reported.
- ratio = plain trunk forward time / PLND time (1.0 = free; the issue's target >= 0.3);
- speed-up over the direct definition: zeroing one FFN neuron and re-running its MLP
  costs one MLP forward per neuron, timed on a sample of neurons and extrapolated to all.
--memory runs plnd_stats over N and 4N documents in fresh subprocesses and prints the peak
RSS of each (bounded memory: the two should be close).
Never run two benchmarks (or other busy jobs) at once on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from workflow_scripts.io import read_parquet
from workflow_scripts.mlp import mlp_sites
from workflow_scripts.modeling import load_model
from workflow_scripts.plnd import plnd_scores


def texts_of(corpus: str, lang: str, n: int) -> list[str]:
    import pyarrow.compute as pc

    table = read_parquet(corpus)
    return table.filter(pc.equal(table["lang"], lang))["text"].to_pylist()[:n]


def memory_child(args: argparse.Namespace, n_docs: int) -> None:
    from workflow_scripts.neurons import plnd_stats

    model, tok = load_model(args.model, threads=args.threads)
    settings = {
        "variant": "paper",
        "parts": args.parts,
        "top_fraction": 0.1,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
    }
    plnd_stats(model, tok, texts_of(args.corpus, args.lang, n_docs), settings)
    print(
        json.dumps(
            {
                "docs": n_docs,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="results/models/gemma")
    ap.add_argument("--corpus", default="resources/corpus/bundled.parquet")
    ap.add_argument("--lang", default="fr")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", nargs="+", default=["ffn", "v", "o"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args, args.memory_child)
        return
    if args.memory:
        for n in (args.docs, 4 * args.docs):
            cmd = [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--docs",
                str(args.docs),
                "--max-length",
                str(args.max_length),
                "--batch-size",
                str(args.batch_size),
                "--memory-child",
                str(n),
                "--parts",
                *args.parts,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            print(out.strip().splitlines()[-1])
        return

    model, tok = load_model(args.model, threads=args.threads)
    texts = sorted(texts_of(args.corpus, args.lang, args.docs), key=len)
    batches = [
        tok(
            texts[i : i + args.batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=args.max_length,
        )
        for i in range(0, len(texts), args.batch_size)
    ]
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def forward() -> None:
        for b in batches:
            model.base_model(**b)

    def plnd() -> None:
        for b in batches:
            plnd_scores(model, b["input_ids"], b["attention_mask"], parts=args.parts)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn()
        return time.perf_counter() - t0

    timed(forward)
    fwd, imp = [], []
    for _ in range(args.rounds):
        fwd.append(timed(forward))
        imp.append(timed(plnd))
    tf, tp = statistics.median(fwd), statistics.median(imp)
    print(
        f"model {args.model}: {len(texts)} docs, {n_tokens} tokens, parts {args.parts}, threads {torch.get_num_threads()}"
    )
    print(f"trunk forward      {n_tokens / tf:8.1f} tokens/s")
    print(
        f"PLND importance    {n_tokens / tp:8.1f} tokens/s   ratio {tf / tp:.3f}  (target >= 0.3)"
    )

    # direct definition on one layer: zero one FFN neuron, rerun that MLP, per neuron
    site = mlp_sites(model)[0]
    captured = {}
    handle = site.mlp.register_forward_pre_hook(lambda _m, a: captured.__setitem__("x", a[0]))
    with torch.inference_mode():
        model.base_model(**batches[0])
    handle.remove()
    x = captured["x"]
    sample = 16
    w = site.down.weight
    t0 = time.perf_counter()
    with torch.inference_mode():
        base = site.mlp(x)
        for k in range(sample):
            saved = w[:, k].clone()
            w[:, k] = 0
            (site.mlp(x) - base).norm(dim=-1)
            w[:, k] = saved
    per_neuron = (time.perf_counter() - t0) / sample
    n_neurons = sum(s.size for s in mlp_sites(model))
    direct_total = per_neuron * n_neurons * len(batches)
    print(
        f"direct zeroing     {per_neuron * 1e3:.1f} ms per FFN neuron and batch -> "
        f"{direct_total:.0f} s for all {n_neurons} FFN neurons over {len(batches)} batches; "
        f"PLND did all parts in {tp:.1f} s: speed-up x{direct_total / tp:.0f}"
    )


if __name__ == "__main__":
    main()

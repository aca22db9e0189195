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
from common import alternate, parser, right_padded_batches, texts_of, timed

from workflow_scripts.models.anatomy import mlp_sites
from workflow_scripts.models.loading import load_model
from workflow_scripts.neurons.plnd import plnd_scores


def memory_child(args: argparse.Namespace, n_docs: int) -> None:
    from workflow_scripts.neurons.selection import plnd_stats

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
    ap = parser(__doc__, lang="fr", docs=8, max_length=128, batch_size=4)
    ap.add_argument("--parts", nargs="+", default=["ffn", "v", "o"])
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
    texts = texts_of(args.corpus, args.lang, args.docs)
    batches = right_padded_batches(tok, texts, args.batch_size, args.max_length)
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def forward() -> None:
        for b in batches:
            model.base_model(**b)

    def plnd() -> None:
        for b in batches:
            plnd_scores(model, b["input_ids"], b["attention_mask"], parts=args.parts)

    tf, tp = alternate(forward, plnd, args.rounds)
    print(
        f"model {args.model}: {len(texts)} docs, {n_tokens} tokens, parts {args.parts}, threads {torch.get_num_threads()}"
    )
    print(f"trunk forward      {n_tokens / tf:8.1f} tokens/s")
    print(
        f"PLND importance    {n_tokens / tp:8.1f} tokens/s   ratio {tf / tp:.3f}  (target >= 0.3)"
    )

    # direct definition: zero one FFN neuron, rerun its MLP; timed on a sample, extrapolated
    def plnd_ffn() -> None:
        for b in batches:
            plnd_scores(model, b["input_ids"], b["attention_mask"], parts=("ffn",))

    t_ffn = statistics.median(timed(plnd_ffn) for _ in range(args.rounds))
    site = mlp_sites(model)[0]
    captured = {}
    handle = site.mlp.register_forward_pre_hook(lambda _m, a: captured.__setitem__("x", a[0]))
    with torch.inference_mode():
        model.base_model(**batches[0])
    handle.remove()
    x, w, sample = captured["x"], site.down.weight, 16
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
        f"FFN only: PLND {t_ffn:.2f} s (ratio {tf / t_ffn:.3f}); direct zeroing "
        f"{per_neuron * 1e3:.1f} ms per neuron and batch -> {direct_total:.0f} s for "
        f"{n_neurons} neurons x {len(batches)} batches: speed-up x{direct_total / t_ffn:.0f}"
    )


if __name__ == "__main__":
    main()

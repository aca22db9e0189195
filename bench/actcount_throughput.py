"""Activation-counting throughput as a ratio of a plain forward pass, same model, same run.

    python bench/actcount_throughput.py --model results/models/gemma --lang en --docs 32

Measures, over the same tokenized documents (sorted by length, batched):
  trunk       model.base_model(...)                       (no LM head, no hooks)
  trunk+count the same with the activation-counting hooks  (positions: all)
  generate    model.generate(...) without / with hooks     (positions: generated)
Rounds alternate so machine noise hits both sides; the median round is reported.
Never run two benchmarks (or other busy jobs) at the same time on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workflow_scripts.actcount import ActivationCounts, _Recorder
from workflow_scripts.corpus import load_corpus
from workflow_scripts.mlp import activation_hooks, mlp_sites
from workflow_scripts.modeling import load_model


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="results/models/gemma")
    ap.add_argument("--corpus", default="resources/corpus/bundled.parquet")
    ap.add_argument("--lang", default="en")
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    model, tok = load_model(args.model, threads=args.threads)
    if args.corpus.endswith("bundled.parquet"):
        import pyarrow.compute as pc

        from workflow_scripts.io import read_parquet

        table = read_parquet(args.corpus)
        texts = table.filter(pc.equal(table["lang"], args.lang))["text"].to_pylist()
    else:
        texts = load_corpus(args.corpus)["text"].to_pylist()
    texts = sorted(texts[: args.docs], key=len)
    tok.padding_side = "right"
    batches = [
        tok(
            texts[i : i + args.batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=args.max_length,
        )
        for i in range(0, len(texts), args.batch_size)
    ]
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    sites = mlp_sites(model)

    def trunk() -> None:
        for b in batches:
            model.base_model(**b)

    def trunk_count() -> None:
        counts = ActivationCounts.empty(sites)
        for b in batches:
            rec = _Recorder(counts, "all", set())
            rec.mask = b["attention_mask"].bool()
            with activation_hooks(sites, rec):
                model.base_model(**b)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn()
        return time.perf_counter() - t0

    trunk()  # warm-up
    plain, hooked = [], []
    for _ in range(args.rounds):
        plain.append(timed(trunk))
        hooked.append(timed(trunk_count))
    tp, th = statistics.median(plain), statistics.median(hooked)
    print(
        f"model {args.model}: {len(texts)} docs, {n_tokens} tokens, batch {args.batch_size}, threads {torch.get_num_threads()}"
    )
    print(f"trunk              {n_tokens / tp:8.1f} tokens/s")
    print(
        f"trunk + counting   {n_tokens / th:8.1f} tokens/s   ratio {tp / th:.3f}  (target >= 0.85)"
    )

    # generation: last position of every forward call
    prompts = texts[: args.batch_size]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    gen_kwargs = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )

    def gen() -> None:
        model.generate(**enc, **gen_kwargs)

    def gen_count() -> None:
        rec = _Recorder(ActivationCounts.empty(sites), "generated", {tok.eos_token_id})
        pre = model.register_forward_pre_hook(rec.pre_forward, with_kwargs=True)
        try:
            with activation_hooks(sites, rec):
                model.generate(**enc, **gen_kwargs)
        finally:
            pre.remove()

    g_plain, g_hooked = [], []
    for _ in range(args.rounds):
        g_plain.append(timed(gen))
        g_hooked.append(timed(gen_count))
    gp, gh = statistics.median(g_plain), statistics.median(g_hooked)
    n_new = args.new_tokens * len(prompts)
    print(f"generate           {n_new / gp:8.1f} new tokens/s (batch {len(prompts)})")
    print(f"generate + count   {n_new / gh:8.1f} new tokens/s   ratio {gp / gh:.3f}")


if __name__ == "__main__":
    main()

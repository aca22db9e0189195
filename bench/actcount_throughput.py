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

import torch
from common import alternate, parser, right_padded_batches, texts_of

from workflow_scripts.models.anatomy import ffn_sites
from workflow_scripts.models.hooks import activation_hooks
from workflow_scripts.models.loading import load_model
from workflow_scripts.neurons.actcount import ActivationCounts, _Recorder


def main() -> None:
    ap = parser(__doc__, lang="en", docs=32, max_length=256, batch_size=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()

    model, tok = load_model(args.model, threads=args.threads)
    texts = texts_of(args.corpus, args.lang, args.docs)
    batches = right_padded_batches(tok, texts, args.batch_size, args.max_length)
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    sites = ffn_sites(model)  # dense MLPs or experts

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
            rec.finish()  # the batch's device counters to the host

    tp, th = alternate(trunk, trunk_count, args.rounds)
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
        rec.finish()

    gp, gh = alternate(gen, gen_count, args.rounds)
    n_new = args.new_tokens * len(prompts)
    print(f"generate           {n_new / gp:8.1f} new tokens/s (batch {len(prompts)})")
    print(f"generate + count   {n_new / gh:8.1f} new tokens/s   ratio {gp / gh:.3f}")


if __name__ == "__main__":
    main()

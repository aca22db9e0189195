"""Region scores: time per step against a plain forward pass, and memory over the steps.

    python bench/region_training.py --model results/models/gemma --score delta --steps 20
    python bench/region_training.py --model results/models/gemma --score grad_x_param --docs 32

Same model, same documents, same run. Prints, per step (delta) or batch (grad_x_param), the
seconds and the process's resident memory (RSS) after it, then
- ratio = plain forward time of a batch (with LM head, inference mode) / one training step
  on the same batch (delta trains on that batch every step, so the times compare);
- RSS after the first and the last step: bounded memory means they are close (the
  optimizer state is allocated at the first step; nothing accumulates per step).
Never run two benchmarks (or other busy jobs) at once on 2 cores.
"""

from __future__ import annotations

import resource
import statistics
import time

import psutil
import torch
from common import parser, texts_of, timed

from workflow_scripts.models.loading import load_model
from workflow_scripts.models.padding import pad_id
from workflow_scripts.regions.scores import grad_x_param_scores
from workflow_scripts.training.loop import collate, make_trainer, training_documents


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    ap = parser(__doc__, lang="fr", docs=32, max_length=512, batch_size=4)
    ap.add_argument("--score", choices=["delta", "grad_x_param"], default="delta")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-5)
    args = ap.parse_args()
    model, tok = load_model(args.model, threads=args.threads)
    docs = training_documents(tok, texts_of(args.corpus, args.lang, args.docs), args.max_length)
    pid = pad_id(tok)
    first = collate(docs[: args.batch_size], pid)
    t_fwd = statistics.median(timed(lambda: model(**first)) for _ in range(3))
    print(f"{args.model}: {len(docs)} documents, batch {args.batch_size}, rss {rss_mb():.0f} MB")
    print(f"plain forward of one batch (LM head, inference): {t_fwd:.2f} s")
    times, rss = [], []
    if args.score == "delta":
        settings = {"batch_size": args.batch_size, "lr": args.lr, "seed": 0}
        trainer = make_trainer(model, settings)
        model.train()
        for step in range(args.steps):  # the timed batch every step: comparable times
            t0 = time.perf_counter()
            trainer.backward(trainer.loss(first))
            trainer.step()
            times.append(time.perf_counter() - t0)
            rss.append(rss_mb())
            print(f"step {step + 1}: {times[-1]:.2f} s, rss {rss[-1]:.0f} MB")
    else:
        t0 = time.perf_counter()
        _, info = grad_x_param_scores(model, docs, {"batch_size": args.batch_size}, pid)
        times = [(time.perf_counter() - t0) / info["batches"]]
        rss = [rss_mb()]
    step = statistics.median(times)
    print(f"median step {step:.2f} s; ratio forward/step {t_fwd / step:.3f}")
    print(f"rss after first step {rss[0]:.0f} MB, after last {rss[-1]:.0f} MB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak rss {peak:.0f} MB")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

"""Cost of a task-evaluation job (``evaluate_task``): how its time grows with the items,
against plain batched greedy generation of the same prompts in the same run.

    python bench/task_cost.py [--model results/models/gemma] [--items 4 8 16]

Per number of items N it evaluates the bundled translation task en->de under the
monolingual and the PiM (k = 2) condition as the job does (few-shot prompts, greedy
with the newline stop, sacrebleu BLEU / chrF, the inhibited share recomputed under
teacher forcing), then runs plain ``greedy_continuations`` of the same prompts for
the same number of new tokens with no stop string and no inhibition pass. It prints
both times, seconds per item, the ratio job / plain and the peak RSS (bounded by one
batch of prompts, not by the items). The task tables are those the workflow built
(``results/tasks/translation/{lang}.parquet``; ``snakemake results/tasks/translation/de.parquet``
and the same for en, es, ru).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_scripts.evaluation.generation import greedy_continuations  # noqa: E402
from workflow_scripts.models.loading import load_model  # noqa: E402
from workflow_scripts.tasks.build import load_task  # noqa: E402
from workflow_scripts.tasks.evaluate import evaluate_prompts  # noqa: E402
from workflow_scripts.tasks.prompts import task_prompts  # noqa: E402

TASKS = REPO / "results" / "tasks" / "translation"
SPEC = {"source": "corpus", "type": "translation"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "results" / "models" / "gemma"))
    ap.add_argument("--items", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, "float32", args.threads)
    langs = ("en", "de", "es", "ru")
    tests, shots = {}, {}
    for lang in langs:
        tests[lang], shots[lang] = load_task(TASKS / f"{lang}.parquet")
    settings = {"max_new_tokens": args.new_tokens, "batch_size": args.batch_size}
    settings["max_length"] = 1024
    print(
        f"{'condition':>10} {'items':>5} {'job s':>7} {'s/item':>6} {'plain s':>7} "
        f"{'ratio':>5} {'new tok/item':>12} {'peak RSS MiB':>12}"
    )
    for condition in ("monolingual", "pim"):
        for n in args.items:
            prompts, chat = task_prompts(
                "translation", SPEC, tests, shots, "en", "de", condition,
                ["es", "ru"], 2, n, args.shots, tok,
            )  # fmt: skip
            t0 = time.perf_counter()
            rows = evaluate_prompts(
                model, tok, prompts, "translation", "chrf", chat, settings, "de", True
            )
            job_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            greedy_continuations(
                model, tok, [p.text for p in prompts], args.new_tokens, args.batch_size, 1024
            )
            plain_s = time.perf_counter() - t0
            new = sum(r["n_new_tokens"] for r in rows) / len(rows)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{condition:>10} {len(rows):>5} {job_s:>7.1f} {job_s / len(rows):>6.2f} "
                f"{plain_s:>7.1f} {job_s / plain_s:>5.2f} {new:>12.1f} {peak:>12.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

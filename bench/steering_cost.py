"""Cost of the steering experiment: how one steering job's generation time grows with the
prompts, against plain batched generation of the same rows in the same run.

    python bench/steering_cost.py [--model results/models/gemma] [--prompts 3 6 12]

Per number of prompts P it runs DiffMean's 7 settings (none, 3 strengths, each with a
random-direction control) as ``steering_table`` does, side by side in batches of at most
64 rows, and plain ``greedy_continuations`` of the same P x 7 rows with no hook; it prints
both times, their ratio and the process's peak RSS (bounded by one batch: the rows of one
generation call, not the prompts).
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

from workflow_scripts.data.corpus import sample_texts  # noqa: E402
from workflow_scripts.evaluation.generation import greedy_continuations  # noqa: E402
from workflow_scripts.evaluation.steering import (  # noqa: E402
    aligned_prompts,
    steer_settings,
    steering_table,
)
from workflow_scripts.evaluation.unit_stats import unit_statistics  # noqa: E402
from workflow_scripts.langid import TokenLanguageClassifier  # noqa: E402
from workflow_scripts.models.loading import load_model  # noqa: E402

CORPUS = REPO / "results" / "corpus" / "bundled"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "results" / "models" / "gemma"))
    ap.add_argument("--prompts", type=int, nargs="+", default=[3, 6, 12])
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, "float32", args.threads)
    mu = {}
    for lang in ("en", "fr"):
        texts = sample_texts(CORPUS / f"{lang}.parquet", "train", 8)
        _, hidden, _ = unit_statistics(model, tok, texts, ["mlp"], max_length=64)
        mu[lang] = torch.tensor(hidden["mean"].to_pylist()[6], device="cpu")
    settings = steer_settings(model, {6: mu["fr"] - mu["en"]}, [0.5, 1.0, 2.0], n_random=1)
    clf = TokenLanguageClassifier(["en", "fr"])
    print(
        f"{'prompts':>7} {'rows':>5} {'steering s':>10} {'plain s':>8} {'ratio':>6} {'peak RSS MiB':>12}"
    )
    for n in args.prompts:
        prompts = aligned_prompts(CORPUS / "en.parquet", CORPUS / "fr.parquet", n)
        rows = n * (len(settings) + 1)
        t0 = time.perf_counter()
        steering_table(model, tok, prompts, settings, "en", "fr", clf, args.new_tokens, 64)
        steer_s = time.perf_counter() - t0
        texts = [p.text for p in prompts] * (len(settings) + 1)
        t0 = time.perf_counter()
        greedy_continuations(model, tok, texts, args.new_tokens, batch_size=64)
        plain_s = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{n:>7} {rows:>5} {steer_s:>10.1f} {plain_s:>8.1f} {plain_s / steer_s:>6.2f} {peak:>12.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

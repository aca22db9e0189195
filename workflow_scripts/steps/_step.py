"""Shared wrapper of the rule scripts: logging to the rule's log, one clear error line."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable


def run(snakemake, main: Callable[[], None]) -> None:
    """Run ``main`` with logging to ``snakemake.log[0]``.

    On failure the traceback goes to the log and one line naming the rule and
    the culprit goes to stderr; the exit status is 1.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
    try:
        main()
    except Exception as err:
        for handler in handlers[1:]:  # the full traceback to the log file only
            handler.stream.write(traceback.format_exc())
            handler.flush()
        print(f"ERROR in rule {snakemake.rule}: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


def threads(snakemake) -> int:
    """Torch threads for this job: the job's threads, never more than the machine has."""
    import os

    return max(1, min(snakemake.threads, os.cpu_count() or 1))


def model_of(snakemake):
    """``(model, tokenizer)`` of a model job (params model_path, dtype; the job's threads)."""
    from workflow_scripts.models.loading import load_model

    return load_model(snakemake.params.model_path, snakemake.params.dtype, threads(snakemake))


def training_job(snakemake, code, **identity):
    """``(model, tokenizer, docs, checkpoint)`` of a training job (region scores, freezing):
    the rule's params (model, settings, checkpoints) and its ``corpus`` input."""
    from workflow_scripts.training.loop import prepare_run

    p = snakemake.params
    return prepare_run(
        p.model_path,
        p.dtype,
        p.settings,
        snakemake.input.corpus,
        p.checkpoint_dir,
        p.checkpoint_every,
        threads(snakemake),
        code=code,
        **identity,
    )


def evaluation_job(snakemake):
    """``(eval_texts, skipped_langs, model, tokenizer)`` of an ablation/perturbation job."""
    from workflow_scripts.evaluation.perplexity import evaluation_texts

    s = snakemake.params.settings
    corpora = dict(zip(snakemake.params.languages, snakemake.input.corpora, strict=True))
    eval_texts, skipped = evaluation_texts(corpora, s["split"], s["n_docs"])
    return (eval_texts, skipped, *model_of(snakemake))

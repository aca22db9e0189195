"""Shared wrapper of the rule scripts: logging to the rule's log, one clear error line."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)


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
    """Torch threads for this job: the job's threads, never more than the cores this
    process may run on (its CPU affinity: a SLURM or cgroup allocation, ``taskset``),
    which can be fewer than the machine has."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(snakemake.threads, cores or 1))


def placement(snakemake) -> dict:
    """The job's model placement, from the run's config (not a param: re-runs nothing)."""
    from workflow_scripts.config import placement_of

    return placement_of(snakemake.config, snakemake.wildcards.model)


def model_of(snakemake, stage: str, new_tokens: int = 0):
    """``(model, tokenizer, settings)`` of a model job of ``stage``.

    The model is loaded (params model_path, dtype; the job's threads) where the
    config's placement says; ``settings`` are the rule's settings with the batch size
    of that device (``placement.batch_size.<stage>`` on CUDA); the job's memory need is
    logged and checked before anything computes (:func:`~workflow_scripts.models.memory.check_fits`),
    and so is the model's anatomy for the stage (:func:`~workflow_scripts.models.anatomy.check_supported`).
    """
    from workflow_scripts.models.anatomy import check_supported, summary
    from workflow_scripts.models.loading import load_model
    from workflow_scripts.models.memory import check_fits
    from workflow_scripts.models.placement import batch_size_for

    where = placement(snakemake)
    p = snakemake.params
    model, tokenizer = load_model(p.model_path, p.dtype, threads(snakemake), where)
    settings = dict(p.settings)
    check_supported(model, stage, settings.get("parts", ()))
    log.info("anatomy: %s", summary(model))
    batch = batch_size_for(model, where, stage, settings["batch_size"])
    setting = f"{stage}.batch_size"
    if batch != settings["batch_size"]:
        log.info("%s: batch size %d on CUDA (placement.batch_size)", stage, batch)
        settings["batch_size"], setting = batch, f"placement.batch_size.{stage}"
    check_fits(model, stage, batch, settings["max_length"], new_tokens, setting)
    return model, tokenizer, settings


def training_job(snakemake, code, optimizer: bool = True, **identity):
    """``(model, tokenizer, docs, checkpoint)`` of a training job (region scores, freezing):
    the rule's params (model, settings, checkpoints) and its ``corpus`` input, the model
    where the config's placement says, its memory need checked (``optimizer``: whether
    the job keeps AdamW state: not for grad x param scores)."""
    from workflow_scripts.models.memory import check_fits
    from workflow_scripts.training.loop import prepare_run

    p = snakemake.params
    run = prepare_run(
        p.model_path,
        p.dtype,
        p.settings,
        snakemake.input.corpus,
        p.checkpoint_dir,
        p.checkpoint_every,
        threads(snakemake),
        code=code,
        placement=placement(snakemake),
        **identity,
    )
    s = p.settings
    check_fits(run[0], "regions", s["batch_size"], s["max_length"], optimizer=optimizer)
    return run


def evaluation_job(snakemake):
    """``(eval_texts, skipped_langs, model, tokenizer, settings, base)`` of an ablation or
    perturbation job; ``base``: the base jobs' unablated perplexities (``input.bases``),
    checked to be measured with this job's perplexity settings."""
    from workflow_scripts.evaluation.ablation import base_results
    from workflow_scripts.evaluation.perplexity import evaluation_texts, perplexity_settings
    from workflow_scripts.io import read_metadata, read_parquet

    model, tokenizer, settings = model_of(snakemake, "ablation")
    corpora = dict(zip(snakemake.params.languages, snakemake.input.corpora, strict=True))
    eval_texts, skipped = evaluation_texts(corpora, settings["split"], settings["n_docs"])
    base = {}
    wanted = {
        **perplexity_settings(settings),
        "split": settings["split"],
        "n_docs": settings["n_docs"],
    }
    for path in snakemake.input.get("bases", []):
        given = read_metadata(path)
        if any(given.get(k) != v for k, v in wanted.items() if k != "batch_size"):
            raise ValueError(f"{path}: measured with other perplexity settings than {wanted}")
        base.update(base_results(read_parquet(path)))
    return eval_texts, skipped, model, tokenizer, settings, base

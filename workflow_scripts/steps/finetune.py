import hashlib
import json
from pathlib import Path

from workflow_scripts.evaluation.ablation import all_units, random_like, units_from_table
from workflow_scripts.evaluation.perplexity import evaluation_texts
from workflow_scripts.io import atomic_path, read_parquet, write_parquet
from workflow_scripts.regions.selection import region_indices
from workflow_scripts.steps._step import run, training_job
from workflow_scripts.training import experiments, restrictions
from workflow_scripts.training.experiments import check_variant, finetune_table, task_prompts

sm = snakemake


def neuron_set(model, path: str, random: bool):
    units = units_from_table(read_parquet(path))
    if not units:
        raise ValueError(f"the neuron set of {sm.wildcards.lang} is empty: nothing to train")
    if random:  # equal count, the same (layer, module) strata, seeded
        candidates = all_units(model, sorted({m for _, m, _ in units}))
        units = random_like(units, candidates, sm.params.settings["seed"])
    return restrictions.NeuronMask(units)


def build(model):
    """enhance: neurons / random (neuron masks), lora, full; forget: a region frozen
    (core, random, monolingual) or none."""
    s, w = sm.params.settings, sm.wildcards
    if w.experiment == "enhance" and w.variant in ("neurons", "random"):
        return neuron_set(model, sm.input.selection, w.variant == "random")
    if w.experiment == "forget" and w.variant != "none":
        return restrictions.FrozenRegion(region_indices(read_parquet(sm.input.region)))
    if w.variant == "lora":
        targets = s["lora_target_modules"] or restrictions.projection_names(model, s["parts"])
        return restrictions.LoRA(s["lora_r"], s["lora_alpha"], targets)
    return restrictions.AllParameters()


def restriction_of(model):
    """The job's restriction, checked on the model; an error names what it came from."""
    w = sm.wildcards
    try:
        restriction = build(model)
        restriction.check(model, sm.params.settings)
    except ValueError as err:
        source = sm.input.get("selection") or sm.input.get("region") or "finetune.lora_*"
        raise ValueError(
            f"fine-tuning {w.experiment} {w.lang}_{w.variant}: {source}: {err}"
        ) from err
    return restriction


def base_rows(lang: str) -> list[dict]:
    """The unmodified model's rows this job compares with: every evaluation language's
    perplexity and the task in the trained language."""
    rows = read_parquet(sm.input.base).to_pylist()
    return [r for r in rows if r["measure"] == "ppl" or r["eval_lang"] == lang]


def inputs_digest() -> str:
    """The neuron set / region this job trains with: a resumed checkpoint must match it."""
    paths = [sm.input[k] for k in ("selection", "region") if k in sm.input.keys()]
    return hashlib.sha256(b"".join(Path(p).read_bytes() for p in paths)).hexdigest()[:16]


def main() -> None:
    w, s, p = sm.wildcards, sm.params.settings, sm.params
    check_variant(w.experiment, w.variant)
    identity = {"experiment": w.experiment, "lang": w.lang, "variant": w.variant}
    model, tokenizer, docs, checkpoint = training_job(
        sm, [restrictions, experiments], **identity, inputs=inputs_digest()
    )
    restriction = restriction_of(model)
    corpora = dict(zip(p.eval_languages, sm.input.corpora, strict=True))
    eval_texts, skipped = evaluation_texts(corpora, "eval", s["eval_docs"])
    task = None
    if "task" in sm.input.keys():
        task = task_prompts(tokenizer, p.task_spec, w.lang, sm.input.task, p.task_settings)
    table, meta = finetune_table(
        model, tokenizer, docs, restriction, eval_texts, s, checkpoint, task, base_rows(w.lang)
    )
    meta = {**s, **meta, **identity, "skipped_eval_langs": skipped}
    write_parquet(table, sm.output[0], metadata=meta)
    if s["keep_weights"]:
        with atomic_path(p.weights, is_dir=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "training.json").write_text(json.dumps(meta, indent=1))
    checkpoint.clear()


run(sm, main)

from workflow_scripts.evaluation.ablation import units_from_table
from workflow_scripts.evaluation.perplexity import evaluation_texts
from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.steps._step import model_of, run
from workflow_scripts.tasks.build import task_type
from workflow_scripts.tasks.experiments import layer_stage_table

sm = snakemake


def main() -> None:
    w, spec, given = sm.wildcards, sm.params.spec, sm.params.settings
    lang, cell = w.subset, w.condition.removeprefix("stage-")
    kind = task_type(spec)
    model, tokenizer, s = model_of(sm, "tasks", new_tokens=given["max_new_tokens"])
    ppl = s["ppl"]
    corpora = {lang: sm.input.corpus_lang, "en": sm.input.corpus_en}
    texts, skipped = evaluation_texts(corpora, ppl["split"], ppl["n_docs"])
    if skipped:
        raise ValueError(f"layer stages: no {ppl['split']} documents for {skipped}")
    table, meta = layer_stage_table(
        model,
        tokenizer,
        spec,
        kind,
        {lang: sm.input.task_lang, "en": sm.input.task_en},
        lang,
        cell,
        units_from_table(read_parquet(sm.input.selection)) if cell != "none" else [],
        texts,
        s,
    )
    meta = {**given, **meta, "task": w.task, "subset": lang, "type": kind}
    write_parquet(table, sm.output[0], metadata=meta)


run(sm, main)

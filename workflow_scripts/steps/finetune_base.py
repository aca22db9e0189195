import pyarrow as pa

from workflow_scripts.evaluation.perplexity import evaluation_texts
from workflow_scripts.io import write_parquet
from workflow_scripts.steps._step import model_of, run
from workflow_scripts.training.experiments import SCHEMA, measure, task_prompts

sm = snakemake


def main() -> None:
    s, p = sm.params.settings, sm.params
    model, tokenizer, _ = model_of(sm, "ablation")
    corpora = dict(zip(p.eval_languages, sm.input.corpora, strict=True))
    eval_texts, skipped = evaluation_texts(corpora, "eval", s["eval_docs"])
    tasks = [
        task_prompts(tokenizer, p.task_spec, lang, path, p.task_settings)
        for lang, path in zip(p.languages, sm.input.tasks, strict=True)
    ]
    rows = measure(model, tokenizer, eval_texts, s, "before", tasks)
    meta = {**s, "skipped_eval_langs": skipped, "languages": p.languages}
    write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), sm.output[0], metadata=meta)


run(sm, main)

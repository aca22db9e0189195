from workflow_scripts.io import write_parquet
from workflow_scripts.steps._step import model_of, run
from workflow_scripts.tasks.build import task_type
from workflow_scripts.tasks.experiments import pim_table

sm = snakemake


def main() -> None:
    w, spec, given = sm.wildcards, sm.params.spec, sm.params.settings
    source, _, target = w.subset.partition("-")
    kind = task_type(spec)
    if (kind == "translation") != bool(target):
        raise ValueError(
            f"task {w.task!r} is a {kind} task: name a "
            f"{'source-target pair (en-de)' if kind == 'translation' else 'language (de)'}, "
            f"not {w.subset!r}"
        )
    model, tokenizer, s = model_of(sm, "tasks", new_tokens=given["max_new_tokens"])
    files = {k.removeprefix("task_"): v for k, v in sm.input.items() if k.startswith("task_")}
    table, meta = pim_table(
        model, tokenizer, spec, kind, files, source, target or None, w.condition, s
    )
    meta = {**given, **meta, "task": w.task, "subset": w.subset, "type": kind}
    write_parquet(table, sm.output[0], metadata=meta)


run(sm, main)

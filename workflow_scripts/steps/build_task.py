from workflow_scripts.steps._step import run
from workflow_scripts.tasks.build import build_task, task_type, write_task

sm = snakemake


def main() -> None:
    task, lang, spec = sm.wildcards.task, sm.wildcards.lang, sm.params.spec
    source_file = sm.input[0] if len(sm.input) and spec["source"] != "huggingface" else None
    table = build_task(spec, lang, source_file, task)
    write_task(table, sm.output[0], task, lang, task_type(spec), spec)


run(sm, main)

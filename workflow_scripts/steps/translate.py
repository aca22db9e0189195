from workflow_scripts.steps._step import run
from workflow_scripts.translation.run import translate_dataset

sm = snakemake
run(
    sm,
    lambda: translate_dataset(
        sm.wildcards.dataset,
        sm.params.spec,
        sm.wildcards.lang,
        sm.params.settings,
        sm.output.table,
        sm.output.report,
        sm.params.cache,
    ),
)

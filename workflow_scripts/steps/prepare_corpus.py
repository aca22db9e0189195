from workflow_scripts.data.corpus import prepare_corpus
from workflow_scripts.steps._step import run

sm = snakemake
run(
    sm,
    lambda: prepare_corpus(
        sm.params.spec, sm.wildcards.lang, sm.output[0], name=sm.wildcards.corpus
    ),
)

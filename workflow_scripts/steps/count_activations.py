from workflow_scripts.neurons.actcount import count_activations_to_files
from workflow_scripts.steps._step import run, threads

sm = snakemake
run(
    sm,
    lambda: count_activations_to_files(
        model_path=sm.params.model_path,
        dtype=sm.params.dtype,
        condition=sm.wildcards.condition,
        corpora=sm.params.corpora,
        settings=sm.params.settings,
        counts_out=sm.output.counts,
        inhibition_out=sm.output.inhibition,
        threads=threads(sm),
        model_name=sm.wildcards.model,
    ),
)

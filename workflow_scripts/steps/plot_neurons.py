from workflow_scripts.figures.neurons import plot_neuron_figures
from workflow_scripts.steps._step import run

sm = snakemake
stages = sm.params.stages
run(
    sm,
    lambda: plot_neuron_figures(
        sm.params.tables,
        sm.params.logit_lens,
        model=sm.wildcards.model,
        layers_out=sm.output.layers,
        overlap_out=sm.output.overlap,
        logit_lens_out=sm.output.logit_lens,
        counts_csv=sm.output.counts,
        jaccard_csv=sm.output.jaccard,
        final_norm=sm.params.final_norm,
        stages=tuple(stages) if stages else None,
    ),
)

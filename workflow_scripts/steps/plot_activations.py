from workflow_scripts.figures.activations import plot_activation_figures
from workflow_scripts.steps._step import run

sm = snakemake
run(
    sm,
    lambda: plot_activation_figures(
        dict(zip(sm.params.conditions, sm.input.counts, strict=True)),
        dict(zip(sm.params.conditions, sm.input.inhibition, strict=True)),
        model=sm.wildcards.model,
        select_proportion=sm.params.select_proportion,
        heatmap_out=sm.output.heatmap,
        inhibition_out=sm.output.inhibition,
        peaks_out=sm.output.peaks,
    ),
)

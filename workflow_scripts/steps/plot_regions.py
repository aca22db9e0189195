from workflow_scripts.figures.regions import plot_regions
from workflow_scripts.steps._step import run

sm = snakemake
run(
    sm,
    lambda: plot_regions(sm.input.summary, sm.input.perturbation, sm.wildcards.model, sm.output[0]),
)

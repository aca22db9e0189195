from workflow_scripts.figures.ablation import plot_ablation
from workflow_scripts.steps._step import run

sm = snakemake
run(
    sm,
    lambda: plot_ablation(
        dict(zip(sm.params.methods, sm.input, strict=True)), sm.wildcards.model, sm.output[0]
    ),
)

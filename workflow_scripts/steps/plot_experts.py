from workflow_scripts.figures.experts import plot_expert_figure
from workflow_scripts.steps._step import run

sm = snakemake
langs = sm.params.languages
run(
    sm,
    lambda: plot_expert_figure(
        dict(zip(langs, sm.input.stats, strict=True)),
        dict(zip(langs, sm.input.selections, strict=True)),
        sm.wildcards.model,
        sm.output[0],
    ),
)

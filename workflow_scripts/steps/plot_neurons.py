from workflow_scripts.figures.neurons import plot_neuron_figures
from workflow_scripts.steps._step import run

sm = snakemake
stages = sm.params.stages
langs = sm.params.languages
selections = iter(sm.input.selections)  # method by method, each in language order
tables = {m: {lang: next(selections) for lang in langs} for m in sm.params.methods}
run(
    sm,
    lambda: plot_neuron_figures(
        tables,
        dict(zip(langs, sm.input.logit_lens, strict=True)),
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

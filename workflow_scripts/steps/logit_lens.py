from workflow_scripts.neurons.logit_lens import logit_lens_to_file
from workflow_scripts.steps._step import run, threads

sm = snakemake
s = sm.params.settings
run(
    sm,
    lambda: logit_lens_to_file(
        sm.params.model_path,
        sm.input.corpus,
        sm.wildcards.lang,
        s["classifier_languages"],
        sm.output[0],
        n_texts=s["n_docs"],
        split=s["split"],
        top_k=s["top_k"],
        max_length=s["max_length"],
        batch_size=s["batch_size"],
        final_norm=s["final_norm"],
        dtype=sm.params.dtype,
        threads=threads(sm),
        model_name=sm.wildcards.model,
    ),
)

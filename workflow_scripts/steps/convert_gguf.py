from workflow_scripts.models.loading import convert_gguf
from workflow_scripts.steps._step import run

sm = snakemake
run(sm, lambda: convert_gguf(sm.params.gguf, sm.output[0], dtype=sm.params.dtype))

from workflow_scripts.figures.tasks import plot_pim
from workflow_scripts.io import read_parquet
from workflow_scripts.steps._step import run

sm = snakemake
run(sm, lambda: plot_pim(read_parquet(sm.input[0]).to_pandas(), sm.wildcards.model, sm.output[0]))

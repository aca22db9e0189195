from workflow_scripts.figures.steering import plot_steering
from workflow_scripts.io import read_parquet
from workflow_scripts.steps._step import run

sm = snakemake
run(
    sm,
    lambda: plot_steering(read_parquet(sm.input[0]).to_pandas(), sm.wildcards.model, sm.output[0]),
)

import pandas as pd

from workflow_scripts.figures.finetune import plot_finetune
from workflow_scripts.steps._step import run

sm = snakemake
run(sm, lambda: plot_finetune(pd.read_csv(sm.input[0]), sm.wildcards.model, sm.output[0]))

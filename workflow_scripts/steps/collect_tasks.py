from workflow_scripts.io import write_frame
from workflow_scripts.steps._step import run
from workflow_scripts.tasks.summary import eval_frames, pim_summary

sm = snakemake


def main() -> None:
    write_frame(pim_summary(eval_frames(list(sm.input))), sm.output.csv, sm.output.parquet)


run(sm, main)

from workflow_scripts.io import write_frame
from workflow_scripts.steps._step import run
from workflow_scripts.tasks.summary import eval_frames, stage_ppl, stage_summary

sm = snakemake


def main() -> None:
    paths = list(sm.input)
    table = stage_summary(eval_frames(paths), stage_ppl(paths))
    write_frame(table, sm.output.csv, sm.output.parquet)


run(sm, main)

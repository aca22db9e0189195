from workflow_scripts.evaluation.steering import summarize
from workflow_scripts.io import read_metadata, read_parquet, write_frame
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    frames = {}
    for path in sm.input:
        meta = read_metadata(path)
        frames[(meta["method"], meta["source"], meta["target"])] = read_parquet(path).to_pandas()
    table = summarize(frames, seed=sm.params.seed)
    write_frame(table, sm.output.csv, sm.output.parquet)


run(sm, main)

import pyarrow as pa

from workflow_scripts.evaluation.steering import summarize
from workflow_scripts.io import atomic_path, read_metadata, read_parquet, write_parquet
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    frames = {}
    for path in sm.input:
        meta = read_metadata(path)
        frames[(meta["method"], meta["source"], meta["target"])] = read_parquet(path).to_pandas()
    table = summarize(frames, seed=sm.params.seed)
    with atomic_path(sm.output.csv) as tmp:
        table.to_csv(tmp, index=False)
    write_parquet(pa.Table.from_pandas(table, preserve_index=False), sm.output.parquet)


run(sm, main)

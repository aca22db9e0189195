import pyarrow as pa

from workflow_scripts.io import atomic_path, write_parquet
from workflow_scripts.steps._step import run
from workflow_scripts.training.summary import collect, summarize

sm = snakemake


def main() -> None:
    frame = collect(list(sm.input))
    write_parquet(pa.Table.from_pandas(frame, preserve_index=False), sm.output.parquet)
    with atomic_path(sm.output.csv) as tmp:
        summarize(frame).to_csv(tmp, index=False)


run(sm, main)

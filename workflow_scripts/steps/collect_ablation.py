import pyarrow as pa

from workflow_scripts.io import read_metadata, read_parquet, write_parquet
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    tables = [read_parquet(path) for path in sm.input]
    # every per-target table repeats the base rows: keep one copy
    base = tables[0].filter(pa.compute.equal(tables[0]["setting"], "base"))
    rest = [t.filter(pa.compute.not_equal(t["setting"], "base")) for t in tables]
    # the settings the parts were computed with (the same for every part)
    meta = {**read_metadata(sm.input[0]), "method": sm.wildcards.method}
    write_parquet(pa.concat_tables([base, *rest]), sm.output[0], metadata=meta)


run(sm, main)

import pyarrow as pa

from workflow_scripts.evaluation.cases import cases_html
from workflow_scripts.io import atomic_path, read_parquet
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    table = pa.concat_tables([read_parquet(p) for p in sm.input])
    with atomic_path(sm.output.csv) as tmp:
        table.to_pandas().to_csv(tmp, index=False)
    with atomic_path(sm.output.html) as tmp:
        tmp.write_text(cases_html(table, sm.wildcards.model), encoding="utf-8")


run(sm, main)

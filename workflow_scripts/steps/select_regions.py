from pathlib import Path

from workflow_scripts.io import write_parquet
from workflow_scripts.models.anatomy import layers_prefix
from workflow_scripts.models.loading import load_model
from workflow_scripts.regions.selection import region_summary, select_regions
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    model, _ = load_model(sm.params.model_path, sm.params.dtype)
    prefix = layers_prefix(model)
    regions = select_regions(
        dict(zip(sm.params.languages, sm.input.scores, strict=True)),
        sm.params.score,
        sm.params.k,
        sm.params.seed,
        prefix,
    )
    meta = {"score": sm.params.score, "k": sm.params.k, "seed": sm.params.seed}
    for path in sm.output.regions:
        name = Path(path).stem
        write_parquet(regions[name], path, metadata={**meta, "region": name})
    summary = region_summary(model, regions, prefix)
    Path(sm.output.table).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(sm.output.table, index=False)


run(sm, main)

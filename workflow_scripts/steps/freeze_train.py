import json

from workflow_scripts.io import atomic_path, read_parquet
from workflow_scripts.models.padding import pad_id
from workflow_scripts.regions.regions import freeze_train, region_indices, training_run
from workflow_scripts.steps._step import run, threads

sm = snakemake


def main() -> None:
    s = sm.params.settings
    model, tokenizer, docs, checkpoint = training_run(
        sm.params, sm.input.corpus, threads(sm), lang=sm.wildcards.lang, region=sm.wildcards.region
    )
    region = region_indices(read_parquet(sm.input.region))
    info = freeze_train(model, docs, region, s, pad_id(tokenizer), checkpoint)
    with atomic_path(sm.output[0], is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({**s, **info}, indent=1))
    checkpoint.clear()


run(sm, main)

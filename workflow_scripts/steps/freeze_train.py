import json

from workflow_scripts.io import atomic_path, read_parquet
from workflow_scripts.models.padding import pad_id
from workflow_scripts.regions import freeze
from workflow_scripts.regions.selection import region_indices
from workflow_scripts.steps._step import run, training_job

sm = snakemake


def main() -> None:
    s, wc = sm.params.settings, sm.wildcards
    model, tokenizer, docs, checkpoint = training_job(sm, [freeze], lang=wc.lang, region=wc.region)
    region = region_indices(read_parquet(sm.input.region))
    info = freeze.freeze_train(model, docs, region, s, pad_id(tokenizer), checkpoint)
    with atomic_path(sm.output[0], is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({**s, **info}, indent=1))
    checkpoint.clear()


run(sm, main)

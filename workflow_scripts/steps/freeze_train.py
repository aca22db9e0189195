import json

from workflow_scripts.io import atomic_path, read_parquet
from workflow_scripts.models.padding import pad_id
from workflow_scripts.regions import freeze
from workflow_scripts.regions.selection import region_indices
from workflow_scripts.steps._step import run, threads
from workflow_scripts.training.loop import prepare_run

sm = snakemake


def main() -> None:
    s, p = sm.params.settings, sm.params
    model, tokenizer, docs, checkpoint = prepare_run(
        p.model_path,
        p.dtype,
        s,
        sm.input.corpus,
        p.checkpoint_dir,
        p.checkpoint_every,
        threads(sm),
        code=[freeze],
        lang=sm.wildcards.lang,
        region=sm.wildcards.region,
    )
    region = region_indices(read_parquet(sm.input.region))
    info = freeze.freeze_train(model, docs, region, s, pad_id(tokenizer), checkpoint)
    with atomic_path(sm.output[0], is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({**s, **info}, indent=1))
    checkpoint.clear()


run(sm, main)

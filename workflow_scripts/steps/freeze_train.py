import json

from workflow_scripts import regions
from workflow_scripts.checkpoints import TrainingCheckpoint, source_hash
from workflow_scripts.corpus import sample_texts
from workflow_scripts.io import atomic_path, read_parquet
from workflow_scripts.modeling import load_model
from workflow_scripts.regions import (
    freeze_train,
    pad_id,
    region_indices,
    training_documents,
)
from workflow_scripts.steps._step import run, threads

sm = snakemake


def main() -> None:
    s = sm.params.settings
    model, tokenizer = load_model(sm.params.model_path, sm.params.dtype, threads(sm))
    texts = sample_texts(sm.input.corpus, "train", s["n_docs"])
    docs = training_documents(tokenizer, texts, s["max_length"])
    region = region_indices(read_parquet(sm.input.region))
    checkpoint = TrainingCheckpoint(
        sm.params.checkpoint_dir,
        {
            **s,
            "code": source_hash(regions),
            "model": sm.params.model_path,
            "region": sm.wildcards.region,
        },
        sm.params.checkpoint_every,
    )
    info = freeze_train(model, docs, region, s, pad_id(tokenizer), checkpoint)
    with atomic_path(sm.output[0], is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({**s, **info}, indent=1))
    checkpoint.clear()


run(sm, main)

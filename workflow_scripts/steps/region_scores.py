from workflow_scripts import regions
from workflow_scripts.checkpoints import TrainingCheckpoint, source_hash
from workflow_scripts.corpus import sample_texts
from workflow_scripts.modeling import load_model
from workflow_scripts.regions import (
    delta_scores,
    grad_x_param_scores,
    pad_id,
    training_documents,
    write_scores,
)
from workflow_scripts.steps._step import run, threads

sm = snakemake


def main() -> None:
    s = sm.params.settings
    model, tokenizer = load_model(sm.params.model_path, sm.params.dtype, threads(sm))
    texts = sample_texts(sm.input.corpus, "train", s["n_docs"])
    docs = training_documents(tokenizer, texts, s["max_length"])
    checkpoint = TrainingCheckpoint(
        sm.params.checkpoint_dir,
        {
            **s,
            "code": source_hash(regions),
            "model": sm.params.model_path,
            "lang": sm.wildcards.lang,
        },
        sm.params.checkpoint_every,
    )
    compute = delta_scores if s["score"] == "delta" else grad_x_param_scores
    scores, info = compute(model, docs, s, pad_id(tokenizer), checkpoint)
    meta = {**s, **{k: v for k, v in info.items() if k != "losses"}, "n_docs_used": len(docs)}
    if "losses" in info:
        meta["loss_first"], meta["loss_last"] = info["losses"][0], info["losses"][-1]
    write_scores(scores, sm.output[0], {"lang": sm.wildcards.lang, **meta})
    checkpoint.clear()


run(sm, main)

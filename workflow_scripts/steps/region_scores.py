from workflow_scripts.models.padding import pad_id
from workflow_scripts.regions.regions import (
    delta_scores,
    grad_x_param_scores,
    training_run,
    write_scores,
)
from workflow_scripts.steps._step import run, threads

sm = snakemake


def main() -> None:
    s = sm.params.settings
    model, tokenizer, docs, checkpoint = training_run(
        sm.params, sm.input.corpus, threads(sm), lang=sm.wildcards.lang
    )
    compute = delta_scores if s["score"] == "delta" else grad_x_param_scores
    scores, info = compute(model, docs, s, pad_id(tokenizer), checkpoint)
    meta = {**s, **{k: v for k, v in info.items() if k != "losses"}, "n_docs_used": len(docs)}
    if "losses" in info:
        meta["loss_first"], meta["loss_last"] = info["losses"][0], info["losses"][-1]
    write_scores(scores, sm.output[0], {"lang": sm.wildcards.lang, **meta})
    checkpoint.clear()


run(sm, main)

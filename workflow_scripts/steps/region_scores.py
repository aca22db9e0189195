from workflow_scripts.models.padding import pad_id
from workflow_scripts.regions import scores
from workflow_scripts.steps._step import run, training_job

sm = snakemake


def main() -> None:
    s = sm.params.settings
    delta = s["score"] == "delta"
    model, tokenizer, docs, checkpoint = training_job(
        sm, [scores], optimizer=delta, lang=sm.wildcards.lang
    )
    compute = scores.delta_scores if delta else scores.grad_x_param_scores
    result, info = compute(model, docs, s, pad_id(tokenizer), checkpoint)
    meta = {**s, **{k: v for k, v in info.items() if k != "losses"}, "n_docs_used": len(docs)}
    if "losses" in info:
        meta["loss_first"], meta["loss_last"] = info["losses"][0], info["losses"][-1]
    scores.write_scores(result, sm.output[0], {"lang": sm.wildcards.lang, **meta})
    checkpoint.clear()


run(sm, main)

from workflow_scripts.evaluation.ablation import units_from_table
from workflow_scripts.evaluation.steering import (
    aligned_prompts,
    neuron_settings,
    steer_layers,
    steer_settings,
    steering_table,
)
from workflow_scripts.evaluation.unit_stats import diffmean_directions, unit_values
from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.langid import TokenLanguageClassifier
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    w, given = sm.wildcards, sm.params.settings
    model, tokenizer, s = model_of(sm, "steering", new_tokens=given["max_new_tokens"])
    prompts = aligned_prompts(
        sm.input.source_corpus,
        sm.input.target_corpus,
        s["n_prompts"],
        max_chars=s["max_chars"],
        fraction=s["prefix_fraction"],
    )
    if w.method == "diffmean":
        layers = steer_layers(model, s["steer_depths"])
        directions = diffmean_directions(sm.input.source_hidden, sm.input.target_hidden, layers)
        settings = steer_settings(model, directions, s["steer_strengths"], s["n_random"], s["seed"])
    else:
        settings = neuron_settings(
            model,
            units_from_table(read_parquet(sm.input.source_selection)),
            units_from_table(read_parquet(sm.input.target_selection)),
            unit_values({w.target: sm.input.target_stats}, s["statistic"]),
            s["strengths"],
            s["statistic"],
            s["n_random"],
            s["seed"],
        )
    table = steering_table(
        model,
        tokenizer,
        prompts,
        settings,
        w.source,
        w.target,
        TokenLanguageClassifier(s["classifier_languages"]),
        max_new_tokens=s["max_new_tokens"],
        batch_size=s["batch_size"],
        max_length=s["max_length"],
        min_letters=s["min_letters"],
    )
    meta = {"method": w.method, "source": w.source, "target": w.target, **given}
    write_parquet(table, sm.output[0], metadata=meta)


run(sm, main)

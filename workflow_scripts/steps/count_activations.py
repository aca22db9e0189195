from workflow_scripts.io import write_parquet
from workflow_scripts.neurons.actcount import count_condition
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    condition = sm.wildcards.condition
    corpora = dict(zip(sm.params.languages, sm.input.corpora, strict=True))
    act = sm.params.settings
    new_tokens = act["max_new_tokens"] if act["positions"] == "generated" else 0
    model, tokenizer, settings = model_of(sm, "actcount", new_tokens)
    counts, meta = count_condition(
        model, tokenizer, condition, corpora, settings, model_name=sm.wildcards.model
    )
    write_parquet(counts.count_table(), sm.output.counts, metadata=meta)
    inhibition = counts.inhibition_table()
    write_parquet(inhibition, sm.output.inhibition, metadata=meta)
    share = float(inhibition["inhibited_share"].to_numpy().mean())
    print(f"{condition}: {int(counts.n_positions[0])} positions, mean inhibited share {share:.3f}")


run(sm, main)

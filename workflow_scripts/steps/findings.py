from workflow_scripts.evaluation.findings import findings_table, write_findings
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    inputs = dict(sm.input.items())
    table = findings_table(
        ablation={m: inputs[f"ablation_{m}"] for m in sm.params.methods},
        region=inputs["region"],
        inhibition={c: inputs[f"inhibition_{c}"] for c in sm.params.conditions},
        selections={
            m: {k.split("_", 2)[2]: v for k, v in inputs.items() if k.startswith(f"sel_{m}_")}
            for m in ("plnd", "lape")
        },
        model=sm.wildcards.model,
    )
    write_findings(table, sm.output.csv, sm.output.parquet)


run(sm, main)

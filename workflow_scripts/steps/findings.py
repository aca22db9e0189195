from workflow_scripts.evaluation.findings import findings_table, write_findings
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    inputs = dict(sm.input.items())
    steering = {}
    for key, path in inputs.items():
        if key.startswith("steer_"):  # steer_{method}_{source}_{target}
            _, method, source, target = key.split("_")
            steering[(method, source, target)] = path
    interventions: dict[str, dict[str, str]] = {}
    for key, path in inputs.items():
        if key.startswith("ablation_") and "." in key:  # ablation_{method}.{intervention}
            method, intervention = key.removeprefix("ablation_").split(".")
            interventions.setdefault(intervention, {})[method] = path
    table = findings_table(
        ablation={m: inputs[f"ablation_{m}"] for m in sm.params.methods},
        region=inputs["region"],
        inhibition={c: inputs[f"inhibition_{c}"] for c in sm.params.conditions},
        selections={
            m: {k.split("_", 2)[2]: v for k, v in inputs.items() if k.startswith(f"sel_{m}_")}
            for m in ("plnd", "lape")
        },
        model=sm.wildcards.model,
        steering=steering or None,
        interventions=interventions,
        tasks={
            "pim": [v for k, v in inputs.items() if k.startswith("pim_")],
            "stages": [v for k, v in inputs.items() if k.startswith("stage_")],
        },
        stage_method=sm.params.stage_method,
        finetune=inputs.get("finetune"),
    )
    write_findings(table, sm.output.csv, sm.output.parquet)


run(sm, main)

from workflow_scripts.evaluation.ablation import units_from_table
from workflow_scripts.evaluation.cases import Case, cases_table
from workflow_scripts.evaluation.interventions import (
    Intervention,
    dense_only,
    intervened,
    steered,
)
from workflow_scripts.evaluation.steering import steer_layers
from workflow_scripts.evaluation.unit_stats import diffmean_directions, unit_values
from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.langid import TokenLanguageClassifier
from workflow_scripts.regions.perturbation import perturbed
from workflow_scripts.regions.selection import region_indices
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    lang, given = sm.wildcards.lang, sm.params.settings
    if not given["prompts"]:
        raise ValueError(f"cases.prompts has no prompts for {lang} (nor for en)")
    model, tokenizer, s = model_of(
        sm, "steering", new_tokens=given["max_new_tokens"]
    )  # generation: the steering stage's memory and batch sizes
    means = unit_values(dict(enumerate(sm.input.mean_stats)), "mean")
    own = unit_values({lang: sm.input.stats}, s["statistic"])
    cases = []
    for method in sm.params.methods:
        units = units_from_table(read_parquet(sm.input[f"sel_{method}"]))
        dense = dense_only(units, f"cases ({method})")
        for kind in s["interventions"]:
            iv = Intervention(kind, s["scale"]) if kind == "scale" else Intervention(kind)
            chosen = units if kind == "zero" else dense
            cases.append(
                Case(
                    f"{method} {lang} neurons ({kind})",
                    method,
                    kind,
                    len(chosen),
                    False,
                    lambda u=chosen, iv=iv: intervened(model, u, iv, means),
                )
            )
        if s["english_prompts"]:
            act = Intervention("set", s["strength"], s["statistic"])
            cases.append(
                Case(
                    f"{method} {lang} neurons activated (set x{s['strength']:g})",
                    method,
                    "set",
                    len(dense),
                    True,
                    lambda u=dense, act=act: intervened(model, u, act, own),
                )
            )
    p = s["perturb"]
    for name in [k for k in sm.input.keys() if k.startswith("region_")]:
        region = name.removeprefix("region_")
        idx = region_indices(read_parquet(sm.input[name]), p["perturb_kinds"])
        cases.append(
            Case(
                f"region {region} ({p['perturb']})",
                "region",
                p["perturb"],
                int(sum(i.numel() for i in idx.values())),
                False,
                lambda idx=idx: perturbed(model, idx, p["perturb"], p["perturb_scale"]),
            )
        )
    if s["english_prompts"]:
        layers = steer_layers(model, s["steer_depths"])
        dirs = diffmean_directions(sm.input.en_hidden, sm.input.hidden, layers)
        cases.append(
            Case(
                f"DiffMean en->{lang} (x{s['strength']:g}, layers {layers})",
                "diffmean",
                "steer",
                len(dirs),
                True,
                lambda: steered(model, dirs, s["strength"]),
            )
        )
    table = cases_table(
        model,
        tokenizer,
        lang,
        s["prompts"],
        s["english_prompts"],
        cases,
        TokenLanguageClassifier(sorted({lang, "en", *s["classifier_languages"]})),
        s["max_new_tokens"],
    )
    write_parquet(table, sm.output[0], metadata={"lang": lang, **given})


run(sm, main)

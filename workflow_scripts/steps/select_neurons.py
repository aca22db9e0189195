from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.neurons.routing import select_experts
from workflow_scripts.neurons.selection import select_actcount, select_lape, select_plnd
from workflow_scripts.steps._step import run

sm = snakemake


def main() -> None:
    stats = {lang: read_parquet(path) for lang, path in zip(sm.params.langs, sm.input, strict=True)}
    s, method = sm.params.settings, sm.wildcards.method
    if method == "plnd":
        tables = select_plnd(stats, s["min_fraction"], s["agnostic_languages"])
    elif method == "lape":
        tables = select_lape(stats, s["top_share"], s["percentile"])
    elif method == "experts":
        tables = select_experts(stats, s["top_share"], s["percentile"])
    else:
        tables = select_actcount(stats, s["select_proportion"])
    for lang, out in zip(sm.params.langs, sm.output, strict=True):
        n = int(tables[lang]["selected"].to_numpy().sum())
        print(
            f"{method} {lang}: {n} language-specific {'experts' if method == 'experts' else 'neurons'}"
        )
        write_parquet(tables[lang], out, metadata={"method": method, "lang": lang, **s})


run(sm, main)

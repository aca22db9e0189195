"""Every tested family by config alone: a ``path:`` to a local tiny model directory, and
``snakemake`` runs activation counting, PLND with every part the family supports, LAPE,
the logit lens and one neuron ablation (README, "The models"); the mixture-of-experts
families also their routing statistics, language-specific experts, the experts figure
and the ablation of experts (routed around). Steering (unit statistics, set / steer,
steered generation) runs by config in a fused (Phi-3) and a mixture-of-experts
(Qwen2-MoE) family; every family's interventions and logit lens are unit-tested
(tests/test_interventions.py, tests/test_logit_lens.py), so the lens runs for en only."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import load_config, make_model, run_snakemake

pytestmark = pytest.mark.slow

# model id in conftest.MODEL_CASES -> PLND parts (every part its attention supports)
ALL = ["ffn", "q", "k", "v", "o"]
FAMILIES = {
    "phi3": ALL,  # fused gate_up, fused concatenated qkv
    "olmo2": ALL,  # q/k norm over the whole projection
    "starcoder2": ALL,  # biases, sliding window, plain GELU MLP
    "gpt_neox": ALL,  # interleaved qkv, partial rotary, parallel blocks
    "bloom": ["ffn", "v", "o"],  # ALiBi: no RoPE for Q/K
    "mixtral": ALL,  # routed experts
    "qwen2_moe": ALL,  # routed + shared expert, one dense layer
}
MOE = {"mixtral": {f"mlp.e{j}" for j in range(4)}}
MOE["qwen2_moe"] = MOE["mixtral"] | {"mlp.shared", "mlp"}
STEERED = ("phi3", "qwen2moe")  # model keys whose steering jobs run here


@pytest.fixture(scope="module")
def families_run(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("families")
    models = {}
    for family, parts in FAMILIES.items():
        path = root / "models" / family
        make_model(tiny_tokenizer, family).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        key = family.replace("_", "")
        models[key] = {
            "corpus": "bundled",
            "path": str(path),
            "resources": {"threads": 1},
            "plnd": {"parts": parts},
        }
    cfg = load_config("tiny", models=models, languages=["en", "fr"])
    cfg["steering"]["pairs"] = [["en", "fr"]]
    cfg["pim"]["directions"] = []  # the tiny config's PiM helper (zh) is not a language here
    targets = []
    for key in models:
        for lang in ("en", "fr"):
            targets += [
                f"results/activations/{key}/{lang}.parquet",
                f"results/stats/{key}/plnd/{lang}.parquet",
                f"results/stats/{key}/lape/{lang}.parquet",
            ]
        targets += [
            f"results/logit_lens/{key}/en.parquet",
            f"results/ablation/{key}/plnd/en.parquet",
        ]
        if key in STEERED:  # unit statistics, set / steer interventions, steered generation
            targets += [f"results/steering/{key}/{m}/en_fr.parquet" for m in ("lape", "diffmean")]
        if key in ("mixtral", "qwen2moe"):
            targets += [
                f"results/figures/experts_{key}.png",
                f"results/ablation/{key}/experts.parquet",
            ]
    workdir = root / "work"
    proc, out = run_snakemake(workdir, cfg, *targets)
    return workdir, models, proc, out


def test_every_family_runs_by_config(families_run):
    workdir, models, proc, out = families_run
    assert proc.returncode == 0, out[-5000:]
    res = workdir / "results"
    for family, key in ((f, f.replace("_", "")) for f in FAMILIES):
        spec = models[key]
        plnd = pq.read_table(res / "stats" / key / "plnd" / "en.parquet")
        modules = set(plnd["module"].to_pylist())
        want = {"mlp" if p == "ffn" else p for p in spec["plnd"]["parts"]}
        if family in MOE:
            want = want - {"mlp"} | MOE[family]
        assert modules == want, (key, modules)
        assert sum(plnd["frequency"].to_pylist()) > 0, key
        lape = pq.read_table(res / "stats" / key / "lape" / "en.parquet")
        assert sum(lape["count"].to_pylist()) > 0, key
        lens = pq.read_table(res / "logit_lens" / key / "en.parquet")
        assert lens.num_rows == 2 * 2  # 2 layers x (en, other)
        ablation = pq.read_table(res / "ablation" / key / "plnd" / "en.parquet")
        settings = set(ablation["setting"].to_pylist())
        assert {"base", "selected", "random"} <= settings, (key, settings)
        for method, kind in (("lape", "both"), ("diffmean", "steer")) if key in STEERED else ():
            steering = pq.read_table(res / "steering" / key / method / "en_fr.parquet")
            assert kind in set(steering["setting"].to_pylist()), (key, method)


def test_moe_families_route_and_ablate_experts(families_run):
    workdir, _, proc, out = families_run
    assert proc.returncode == 0, out[-5000:]
    res = workdir / "results"
    for key in ("mixtral", "qwen2moe"):
        routing = pq.read_table(res / "stats" / key / "experts" / "en.parquet")
        assert routing.column_names == ["layer", "expert", "count", "weight_sum", "n_tokens"]
        assert sum(routing["count"].to_pylist()) == 2 * sum(  # top-2 of every token
            n
            for n, e in zip(
                routing["n_tokens"].to_pylist(), routing["expert"].to_pylist(), strict=True
            )
            if e == 0
        )
        experts = pq.read_table(res / "neurons" / key / "experts" / "en.parquet")
        assert set(experts["module"].to_pylist()) == {"expert"}
        lape = pq.read_table(res / "stats" / key / "lape" / "en.parquet")
        assert (
            set(lape["module"].to_pylist()) == MOE["mixtral" if key == "mixtral" else "qwen2_moe"]
        )
        ablation = pq.read_table(res / "ablation" / key / "experts.parquet")
        assert {"base", "selected"} <= set(ablation["setting"].to_pylist())
        assert (res / "figures" / f"experts_{key}.png").stat().st_size > 10_000

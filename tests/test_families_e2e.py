"""Every tested family by config alone: a ``path:`` to a local tiny model directory, and
``snakemake`` runs activation counting, PLND with every part the family supports, LAPE,
the logit lens and one neuron ablation (README, "The models")."""

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
}


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
    targets = []
    for key in models:
        for lang in ("en", "fr"):
            targets += [
                f"results/activations/{key}/{lang}.parquet",
                f"results/stats/{key}/plnd/{lang}.parquet",
                f"results/stats/{key}/lape/{lang}.parquet",
                f"results/logit_lens/{key}/{lang}.parquet",
            ]
        targets.append(f"results/ablation/{key}/plnd/en.parquet")
    workdir = root / "work"
    proc, out = run_snakemake(workdir, cfg, *targets)
    return workdir, models, proc, out


def test_every_family_runs_by_config(families_run):
    workdir, models, proc, out = families_run
    assert proc.returncode == 0, out[-5000:]
    res = workdir / "results"
    for key, spec in models.items():
        plnd = pq.read_table(res / "stats" / key / "plnd" / "en.parquet")
        modules = set(plnd["module"].to_pylist())
        want = {"mlp" if p == "ffn" else p for p in spec["plnd"]["parts"]}
        assert modules == want, (key, modules)
        assert sum(plnd["frequency"].to_pylist()) > 0, key
        lape = pq.read_table(res / "stats" / key / "lape" / "en.parquet")
        assert sum(lape["count"].to_pylist()) > 0, key
        lens = pq.read_table(res / "logit_lens" / key / "en.parquet")
        assert lens.num_rows == 2 * 2  # 2 layers x (en, other)
        ablation = pq.read_table(res / "ablation" / key / "plnd" / "en.parquet")
        settings = set(ablation["setting"].to_pylist())
        assert {"base", "selected", "random"} <= settings, (key, settings)

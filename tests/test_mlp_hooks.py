"""MLP sites and activation hooks against a direct computation from the weights."""

from __future__ import annotations

import pytest
import torch
from conftest import GATED, MODEL_CASES, MODEL_IDS, direct_activation

from workflow_scripts.models.anatomy import decoder_layers, mlp_sites
from workflow_scripts.models.hooks import activation_hooks

TEXTS = ["the cat sees the river today.", "le chat voit la ville.", "猫喜欢水"]


def _expected_width(model_id: str) -> int:
    model_type, _ = MODEL_CASES[model_id]
    return 4 * 32 if model_type == "bloom" else 64  # Bloom's MLP is always 4 x hidden


def _direct_activation(model_type: str, site, h: torch.Tensor) -> torch.Tensor:
    """The neuron activation computed from the MLP input ``h`` and the raw weights."""
    return direct_activation(model_type, site.mlp, h)


def _inputs(tokenizer):
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def _capture(model, tokenizer, sites):
    """(hooked activations, MLP inputs) per layer, from one forward over TEXTS."""
    got: dict[int, list[torch.Tensor]] = {}
    mlp_in: dict[int, torch.Tensor] = {}
    handles = [
        s.mlp.register_forward_pre_hook(
            lambda _m, args, layer=s.layer: mlp_in.__setitem__(layer, args[0].detach().clone())
        )
        for s in sites
    ]
    try:
        with activation_hooks(sites, lambda layer, a: got.setdefault(layer, []).append(a.clone())):
            with torch.no_grad():
                model(**_inputs(tokenizer))
    finally:
        for h in handles:
            h.remove()
    return got, mlp_in


def _all_hooks(model):
    return [
        (name, kind)
        for name, m in model.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs")
        if getattr(m, kind, None)
    ]


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_mlp_sites(tiny_model, model_id):
    model = tiny_model(model_id)
    sites = mlp_sites(model)
    assert len(sites) == model.config.num_hidden_layers == 2
    assert [s.layer for s in sites] == [0, 1]
    model_type = MODEL_CASES[model_id][0]
    for s in sites:
        assert s.size == _expected_width(model_id)
        assert s.gated is GATED.get(model_type, False)
        assert s.down_weight().shape == (32, s.size)  # column k = neuron k
    assert len(decoder_layers(model)) == 2


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_hooks_deliver_direct_activation(tiny_model, tiny_tokenizer, model_id):
    model = tiny_model(model_id)
    sites = mlp_sites(model)
    got, mlp_in = _capture(model, tiny_tokenizer, sites)
    assert sorted(got) == [0, 1]
    model_type = MODEL_CASES[model_id][0]
    n_tokens = _inputs(tiny_tokenizer)["input_ids"].shape
    for s in sites:
        assert len(got[s.layer]) == 1, "one callback per layer and forward"
        act = got[s.layer][0]
        assert act.shape == (*n_tokens, s.size)
        with torch.no_grad():
            expected = _direct_activation(model_type, s, mlp_in[s.layer])
        assert torch.allclose(act, expected, atol=1e-5, rtol=1e-4), (
            model_id,
            s.layer,
            (act - expected).abs().max(),
        )
        # not trivially the same tensor for every layer
        assert act.abs().sum() > 0


def test_shared_activation_module_falls_back_to_gate_output(tiny_model, tiny_tokenizer):
    """If all layers share one act_fn module, hooks go on gate_proj and apply act_fn."""
    model = tiny_model("llama")
    layers = decoder_layers(model)
    shared = layers[0].mlp.act_fn
    for block in layers:
        block.mlp.act_fn = shared
    sites = mlp_sites(model)
    assert all(s.act is None for s in sites)
    got, mlp_in = _capture(model, tiny_tokenizer, sites)
    for s in sites:
        assert len(got[s.layer]) == 1
        expected = _direct_activation("llama", s, mlp_in[s.layer])
        assert torch.allclose(got[s.layer][0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_id", ["qwen2", "gpt2", "bloom", "gemma3_text"])
def test_hooks_removed_after_context(tiny_model, tiny_tokenizer, model_id):
    model = tiny_model(model_id)
    enc = _inputs(tiny_tokenizer)
    with torch.no_grad():
        before = model(**enc).logits
    assert _all_hooks(model) == []
    sites = mlp_sites(model)
    calls = []
    with activation_hooks(sites, lambda layer, a: calls.append(layer)):
        assert _all_hooks(model), "hooks are registered inside the context"
        with torch.no_grad():
            during = model(**enc).logits
    assert sorted(calls) == [0, 1]
    assert _all_hooks(model) == []
    with torch.no_grad():
        after = model(**enc).logits
    assert torch.equal(before, during)
    assert torch.equal(before, after)
    calls.clear()
    with torch.no_grad():
        model(**enc)
    assert calls == [], "no callback after the context"


@pytest.mark.parametrize("model_id", ["qwen2", "gpt2"])
def test_hooks_removed_on_exception(tiny_model, tiny_tokenizer, model_id):
    model = tiny_model(model_id)
    enc = _inputs(tiny_tokenizer)
    with torch.no_grad():
        before = model(**enc).logits
    sites = mlp_sites(model)
    with pytest.raises(RuntimeError, match="boom"):
        with activation_hooks(sites, lambda layer, a: None):
            raise RuntimeError("boom")
    assert _all_hooks(model) == []

    def failing(layer, act):
        raise RuntimeError("boom in callback")

    with pytest.raises(RuntimeError, match="boom in callback"):
        with activation_hooks(sites, failing), torch.no_grad():
            model(**enc)
    assert _all_hooks(model) == []
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, before)


def test_unsupported_model_raises():
    class NoMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 1})()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="no list of decoder layers"):
        mlp_sites(NoMLP())

"""Mixture-of-experts models (Mixtral; Qwen2-MoE with a shared expert and a dense layer)
against direct computations from the raw weights: the router's top-k, every expert's
activations, PLND's expert importances by zeroing one neuron at a time, and ablation
(expert neurons by hooks = by weights = by hand; experts routed around = a re-routed
block computed by hand).

Models run in float64 so that batched, hooked and direct computations agree closely,
with transformers' ``eager`` experts loop (its default ``grouped_mm`` has no float64);
one test runs the default implementation in float32.
"""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from conftest import MOE_CASES, forward_with_hooks, synthetic_sentences

from workflow_scripts.evaluation.ablation import all_units, deactivated, random_like
from workflow_scripts.models.anatomy import (
    ExpertSite,
    MLPSite,
    check_supported,
    decoder_layers,
    ffn_sites,
    layer_modules,
    mlp_sites,
)
from workflow_scripts.neurons.actcount import count_activations
from workflow_scripts.neurons.plnd import plnd_scores
from workflow_scripts.neurons.routing import (
    ROUTING_COLUMNS,
    routing_counts,
    routing_frequency,
    select_experts,
)
from workflow_scripts.neurons.selection import select_actcount, select_lape
from workflow_scripts.neurons.summary import selection_counts

_S = synthetic_sentences(seed=2)
TEXTS = [_S["en"][0], _S["fr"][1][:20], _S["zh"][2], " ".join(_S["de"][3:5])]
ARCHS = list(MOE_CASES)


def _eager64(model):
    model.config._experts_implementation = "eager"
    return model.double()


@pytest.fixture(params=ARCHS)
def moe(request, tiny_model):
    return _eager64(tiny_model(request.param))


def _encode(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")


def _direct_route(block, x):
    """Top-k weights and indices of the block's router, from its raw weight (softmax in
    float32, as both routers compute it)."""
    probs = F.softmax((x @ block.gate.weight.T).float(), dim=-1).to(x.dtype)
    top, idx = torch.topk(probs, block.gate.top_k, dim=-1)
    if getattr(block.gate, "norm_topk_prob", True):
        top = top / top.sum(-1, keepdim=True)
    return top, idx


def _expert_acts(block, x, j):
    """``(silu(gate_j x), up_j x)`` of expert j from the 3-D weights."""
    w = block.experts.gate_up_proj[j]
    size = w.shape[0] // 2
    return F.silu(x @ w[:size].T), x @ w[size:].T


def _run_and_capture(model, tokenizer, texts):
    """``(encoding, layer -> [MLP block input])`` of one forward over ``texts``."""
    enc = _encode(tokenizer, texts)
    seen, handles = _capture_block_inputs(model)
    forward_with_hooks(model, enc, handles)
    return enc, seen


def _capture_block_inputs(model):
    """layer -> list of the MoE/MLP block inputs ``[B, T, H]`` (own pre-hooks)."""
    seen, handles = {}, []
    for i, block in enumerate(decoder_layers(model)):
        handles.append(
            block.mlp.register_forward_pre_hook(
                lambda _m, a, i=i: seen.setdefault(i, []).append(a[0].detach())
            )
        )
    return seen, handles


# ------------------------------------------------------------------------- anatomy


def test_anatomy(tiny_model):
    mixtral, qwen = tiny_model("mixtral"), tiny_model("qwen2_moe")
    assert [type(s) for s in ffn_sites(mixtral)] == [ExpertSite, ExpertSite]
    site = ffn_sites(mixtral)[0]
    assert (site.n_experts, site.top_k, site.size, site.shared) == (4, 2, 64, None)
    q0, q1 = ffn_sites(qwen)
    assert isinstance(q0, ExpertSite) and isinstance(q1, MLPSite)
    assert q0.shared is not None and q0.shared_gate is not None
    assert layer_modules([q0, q1]) == [
        [("mlp.e0", 16), ("mlp.e1", 16), ("mlp.e2", 16), ("mlp.e3", 16), ("mlp.shared", 64)],
        [("mlp", 64)],
    ]
    with pytest.raises(NotImplementedError, match="layer 0: MixtralSparseMoeBlock"):
        mlp_sites(mixtral)


def test_unsupported_moe_block_fails_clearly(tiny_model):
    model = tiny_model("mixtral")
    del decoder_layers(model)[1].mlp.experts.gate_up_proj
    with pytest.raises(NotImplementedError, match=r"layer 1: .*MixtralExperts.*gate_up_proj"):
        check_supported(model, "lape")


def test_dense_model_has_no_experts(tiny_model):
    with pytest.raises(ValueError, match="no mixture-of-experts layer"):
        check_supported(tiny_model("qwen2"), "experts")
    with pytest.raises(ValueError, match="no mixture-of-experts layer"):
        routing_counts(tiny_model("qwen2"), None, ["x"])


# ------------------------------------------------------------------------- routing


def test_routing_equals_direct_top_k_count(moe, tiny_tokenizer):
    table = routing_counts(moe, tiny_tokenizer, TEXTS, batch_size=3)
    assert table.column_names == ROUTING_COLUMNS
    enc, seen = _run_and_capture(moe, tiny_tokenizer, TEXTS)
    valid = enc["attention_mask"].bool().reshape(-1)
    for site in (s for s in ffn_sites(moe) if isinstance(s, ExpertSite)):
        (x,) = seen[site.layer]
        with torch.no_grad():
            weights, idx = _direct_route(site.block, x.reshape(-1, x.shape[-1])[valid])
        count = torch.zeros(site.n_experts, dtype=torch.int64)
        weight = torch.zeros(site.n_experts, dtype=torch.float64)
        for j in range(site.n_experts):
            count[j] = (idx == j).any(-1).sum()
            weight[j] = weights[idx == j].sum()
        rows = table.filter(pa.compute.equal(table["layer"], site.layer))
        assert rows["count"].to_pylist() == count.tolist()
        # routing weights are float32 in both routers, whatever the model's dtype
        np.testing.assert_allclose(rows["weight_sum"].to_numpy(), weight.numpy(), rtol=1e-6)
        assert set(rows["n_tokens"].to_pylist()) == {int(valid.sum())}
        freq = routing_frequency(rows)
        assert freq.sum() == pytest.approx(site.top_k)


def test_routing_is_independent_of_batching(tiny_model, tiny_tokenizer):
    model = _eager64(tiny_model("mixtral"))
    a = routing_counts(model, tiny_tokenizer, TEXTS, batch_size=4)
    b = routing_counts(model, tiny_tokenizer, TEXTS[::-1], batch_size=1)
    assert a["count"].to_pylist() == b["count"].to_pylist()


def test_select_experts_is_lape_over_experts():
    def table(counts, n):
        return pa.table(
            {
                "layer": np.repeat([0, 1], 4).astype(np.int32),
                "expert": np.tile(np.arange(4), 2).astype(np.int32),
                "count": np.array(counts, dtype=np.int64),
                "weight_sum": np.array(counts, dtype=np.float64) / 2,
                "n_tokens": np.full(8, n, dtype=np.int64),
            }
        )

    # expert (0, 3) is routed to by "fr" tokens only; the others are shared evenly
    stats = {
        "en": table([50, 50, 50, 0, 50, 50, 50, 50], 100),
        "fr": table([40, 40, 40, 80, 50, 50, 50, 50], 100),
    }
    out = select_experts(stats, top_share=0.125, percentile=80)
    assert out["fr"].column_names[:5] == ["layer", "module", "index", "score", "selected"]
    assert set(out["fr"]["module"].to_pylist()) == {"expert"}
    chosen = out["fr"].filter(out["fr"]["selected"])
    assert list(zip(chosen["layer"].to_pylist(), chosen["index"].to_pylist(), strict=True)) == [
        (0, 3)
    ]
    assert not any(out["en"]["selected"].to_pylist())
    assert out["fr"]["score"].to_pylist()[3] == pytest.approx(0.8)


# ------------------------------------------------------------ counting and LAPE


def _direct_counts(model, tokenizer, texts):
    """(layer, module, index) -> (count, positions) from the raw weights, all tokens."""
    enc, seen = _run_and_capture(model, tokenizer, texts)
    valid = enc["attention_mask"].bool().reshape(-1)
    out = {}
    for i, block in enumerate(decoder_layers(model)):
        (x,) = seen[i]
        x = x.reshape(-1, x.shape[-1])[valid]
        groups = []
        if hasattr(block.mlp, "experts"):
            _, idx = _direct_route(block.mlp, x)
            for j in range(block.mlp.experts.gate_up_proj.shape[0]):
                routed = (idx == j).any(-1)
                groups.append((f"mlp.e{j}", _expert_acts(block.mlp, x[routed], j)[0]))
            if hasattr(block.mlp, "shared_expert"):
                groups.append(
                    ("mlp.shared", F.silu(x @ block.mlp.shared_expert.gate_proj.weight.T))
                )
        else:
            groups.append(("mlp", F.silu(x @ block.mlp.gate_proj.weight.T)))
        for module, acts in groups:
            for k, c in enumerate((acts > 0).sum(0).tolist()):
                out[(i, module, k)] = (c, acts.shape[0])
    return out


def test_counts_per_expert_equal_direct_count(moe, tiny_tokenizer):
    got = count_activations(moe, tiny_tokenizer, TEXTS, positions="all", batch_size=3)
    table = got.count_table()
    assert table.column_names == ["layer", "module", "index", "count", "n_positions"]
    direct = _direct_counts(moe, tiny_tokenizer, TEXTS)
    cols = [table[c].to_pylist() for c in table.column_names]
    mine = {(la, m, i): (c, n) for la, m, i, c, n in zip(*cols, strict=True)}
    assert mine == direct
    per_expert = {n for (_, m, _), (_, n) in mine.items() if m.startswith("mlp.e")}
    assert len(per_expert) > 1, "each expert saw its own tokens"


def test_generated_counts_are_batch_independent(tiny_model, tiny_tokenizer):
    model = _eager64(tiny_model("qwen2_moe"))
    kwargs = {"positions": "generated", "max_new_tokens": 4}
    a = count_activations(model, tiny_tokenizer, TEXTS, batch_size=4, **kwargs)
    b = count_activations(model, tiny_tokenizer, TEXTS, batch_size=1, **kwargs)
    assert torch.equal(a.counts, b.counts)
    assert torch.equal(a.column_positions, b.column_positions)
    # layer 0: every position goes to 2 routed experts and the shared one; layer 1 is dense
    assert int(a.n_positions[0]) == 3 * int(a.n_positions[1])


def test_lape_and_actcount_select_expert_neurons(moe, tiny_tokenizer):
    counts = {
        lang: count_activations(moe, tiny_tokenizer, _S[lang][:8], positions="all").count_table()
        for lang in ("en", "fr", "zh")
    }
    for tables in (select_lape(counts, 0.05, 90), select_actcount(counts, 0.05)):
        t = tables["zh"]
        assert t.num_rows == counts["zh"].num_rows
        assert t["module"].to_pylist() == counts["zh"]["module"].to_pylist()
        assert any(m.startswith("mlp.e") for m in t.filter(t["selected"])["module"].to_pylist())


def test_selection_counts_fold_experts_into_mlp(tmp_path):
    table = pa.table(
        {
            "layer": [0, 0, 1, 1],
            "module": ["mlp.e0", "mlp.shared", "mlp.e3", "q"],
            "index": [1, 2, 3, 4],
            "score": [1.0] * 4,
            "selected": [True] * 4,
        }
    )
    path = tmp_path / "en.parquet"
    pa.parquet.write_table(table, path)
    counts = selection_counts({"plnd": {"en": path}}).to_pydict()
    got = {
        (la, m): n
        for la, m, n in zip(counts["layer"], counts["module"], counts["n_selected"], strict=True)
    }
    assert got == {(0, "mlp"): 2, (0, "q"): 0, (1, "mlp"): 1, (1, "q"): 1}


# ------------------------------------------------------------------------------ PLND


def test_plnd_expert_ffn_equals_zeroing_one_neuron(moe, tiny_tokenizer):
    """Per document: l2 over tokens of the MoE block output's change when one neuron of
    one expert (or the shared expert) is zeroed, measured by re-running the block."""
    enc = _encode(tiny_tokenizer, TEXTS[:2])
    scores = plnd_scores(moe, enc["input_ids"], enc["attention_mask"], parts=("ffn",))
    _, seen = _run_and_capture(moe, tiny_tokenizer, TEXTS[:2])
    valid = enc["attention_mask"].bool()
    site = ffn_sites(moe)[0]
    block, x = site.block, seen[0][0]
    with torch.no_grad():
        base = block(x)
        checked = 0
        for module, k in [("mlp.e0", 3), ("mlp.e2", 10), ("mlp.shared", 5)]:
            if module == "mlp.shared" and site.shared is None:
                continue
            changed = copy.deepcopy(block)
            if module == "mlp.shared":
                changed.shared_expert.gate_proj.weight[k] = 0
                changed.shared_expert.up_proj.weight[k] = 0
            else:
                j = int(module[5:])
                changed.experts.gate_up_proj[j, k] = 0
                changed.experts.gate_up_proj[j, site.size + k] = 0
            delta = (changed(x) - base).norm(dim=-1) * valid
            want = delta.pow(2).sum(1).sqrt()
            got = scores[(0, "ffn" + module[3:])].l2[:, k]
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
            checked += 1
    assert checked >= 2
    n_parts = {key[1] for key in scores if key[0] == 0}
    assert n_parts == {f"ffn.e{j}" for j in range(4)} | (
        {"ffn.shared"} if site.shared is not None else set()
    )


# -------------------------------------------------------------------------- ablation


def _logits(model, tokenizer, texts=TEXTS):
    with torch.no_grad():
        return model(**_encode(tokenizer, texts)).logits


def test_expert_neurons_hooks_equal_weights_and_hand_zeroing(moe, tiny_tokenizer):
    units = [(0, "mlp.e1", 3), (0, "mlp.e1", 7), (0, "mlp.e3", 0), (1, "mlp.e2", 5)]
    units = [u for u in units if u[0] == 0] if moe.config.model_type == "qwen2_moe" else units
    if moe.config.model_type == "qwen2_moe":
        units += [(0, "mlp.shared", 2), (1, "mlp", 9)]
    base = _logits(moe, tiny_tokenizer)
    with deactivated(moe, units, mode="hooks"):
        hooked = _logits(moe, tiny_tokenizer)
    with deactivated(moe, units, mode="weights"):
        zeroed = _logits(moe, tiny_tokenizer)
    by_hand = copy.deepcopy(moe)
    with torch.no_grad():
        for layer, module, k in units:
            mlp = decoder_layers(by_hand)[layer].mlp
            if module.startswith("mlp.e"):
                j = int(module[5:])
                mlp.experts.down_proj[j, :, k] = 0
            else:
                (mlp.shared_expert if module == "mlp.shared" else mlp).down_proj.weight[:, k] = 0
    assert not torch.allclose(hooked, base, atol=1e-6)
    torch.testing.assert_close(hooked, zeroed, rtol=0, atol=1e-10)
    torch.testing.assert_close(zeroed, _logits(by_hand, tiny_tokenizer), rtol=0, atol=1e-10)
    torch.testing.assert_close(_logits(moe, tiny_tokenizer), base, rtol=0, atol=0)


def test_route_around_experts_equals_rerouting_by_hand(moe, tiny_tokenizer):
    site = ffn_sites(moe)[0]
    banned = [1]
    seen, handles = _capture_block_inputs(moe)
    received = []
    handles.append(
        site.experts.register_forward_pre_hook(lambda _m, a: received.append(a[1].clone()))
    )
    try:
        with deactivated(moe, [(0, "expert", j) for j in banned], mode="weights"):
            _logits(moe, tiny_tokenizer)
    finally:
        for h in handles:
            h.remove()
    (index,) = received
    assert not torch.isin(index, torch.tensor(banned)).any()
    x = seen[0][0].reshape(-1, seen[0][0].shape[-1])
    block = site.block
    logits = x @ block.gate.weight.T
    logits[:, banned] = float("-inf")
    top, idx = torch.topk(F.softmax(logits.float(), -1).to(x.dtype), site.top_k, dim=-1)
    if getattr(block.gate, "norm_topk_prob", True):
        top = top / top.sum(-1, keepdim=True)
    assert torch.equal(idx, index)
    with torch.no_grad():
        want = torch.zeros_like(x)
        for j in range(site.n_experts):
            routed = (idx == j).any(-1)
            if not routed.any():
                continue
            act, up = _expert_acts(block, x[routed], j)
            w = (top[routed] * (idx[routed] == j)).sum(-1, keepdim=True)
            want[routed] += (act * up) @ block.experts.down_proj[j].T * w
        with deactivated(moe, [(0, "expert", j) for j in banned]):
            got = block.experts(x, *reversed(block.gate(x)[1:]))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)  # float32 routing weights
    assert (got - want).abs().max() < 1e-4 * want.abs().max()


def test_expert_unit_errors(moe):
    with pytest.raises(ValueError, match="cannot be removed"):
        with deactivated(moe, [(0, "expert", j) for j in range(3)]):
            pass
    with pytest.raises(ValueError, match=r"name its neurons mlp\.e<j>"):
        with deactivated(moe, [(0, "mlp", 1)]):
            pass
    with pytest.raises(ValueError, match=r"layer 0 has 4 experts, no 'mlp\.e7'"):
        with deactivated(moe, [(0, "mlp.e7", 1)]):
            pass
    with pytest.raises(ValueError, match="unknown module"):
        with deactivated(moe, [(0, "mlp.x1", 1)]):
            pass


def test_random_controls_draw_within_the_same_expert(moe):
    units = [(0, "mlp.e2", 3), (0, "mlp.e2", 4), (0, "expert", 1)]
    candidates = all_units(moe, ["mlp.e2", "expert"])
    drawn = random_like(units, candidates, seed=0)
    assert sorted({(la, m) for la, m, _ in drawn}) == [(0, "expert"), (0, "mlp.e2")]
    assert len(drawn) == 3
    n_mlp = len(all_units(moe, ["mlp"]))
    widths = sum(w for groups in layer_modules(ffn_sites(moe)) for _, w in groups)
    assert n_mlp == widths


def test_default_experts_implementation_in_float32(tiny_model, tiny_tokenizer):
    """What a user gets: grouped_mm experts in float32. Statistics are recomputed from the
    experts' inputs, so they do not depend on the implementation; ablation by hooks
    matches ablation by weights to float32 rounding."""
    model = tiny_model("mixtral")
    assert model.config._experts_implementation == "grouped_mm"
    eager = _eager64(tiny_model("mixtral")).float()
    a = count_activations(model, tiny_tokenizer, TEXTS, positions="all")
    b = count_activations(eager, tiny_tokenizer, TEXTS, positions="all")
    assert torch.equal(a.column_positions, b.column_positions)
    assert (a.counts != b.counts).sum() <= 2  # signs of near-zero activations may flip
    units = [(0, "mlp.e1", 3), (1, "mlp.e0", 8), (1, "expert", 2)]
    with deactivated(model, units, mode="hooks"):
        hooked = _logits(model, tiny_tokenizer)
    with deactivated(model, units, mode="weights"):
        zeroed = _logits(model, tiny_tokenizer)
    torch.testing.assert_close(hooked, zeroed, rtol=1e-4, atol=1e-5)


def test_unsupported_expert_layouts_are_named(tiny_model):
    model = tiny_model("mixtral")
    decoder_layers(model)[0].mlp.experts.is_transposed = True
    with pytest.raises(NotImplementedError, match=r"layer 0: .*is_transposed"):
        ffn_sites(model)


def test_anatomy_summary_of_every_family(tiny_model):
    from conftest import MODEL_CASES

    from workflow_scripts.models.anatomy import summary

    got = {arch: summary(tiny_model(arch)) for arch in [*MODEL_CASES, *MOE_CASES]}
    assert got["phi3"]["mlp"] == ["fused gate_up (width 64)"]
    assert got["phi3"]["attention"] == "concat"
    assert got["gpt_neox"]["attention"] == "interleaved"
    assert got["gpt_neox"]["parallel_block"] and got["gpt_neox"]["rotary_share"] == 0.25
    assert not got["llama"]["parallel_block"]
    assert got["olmo2"]["qk_norm"] == "whole projection"
    assert got["gemma3_text"]["qk_norm"] == "per head"
    assert got["qwen2_gqa"]["kv_heads"] == 2
    assert got["starcoder2"]["mlp"] == ["plain (width 64)"]
    assert got["gpt2"]["attention"].startswith("not readable: layer 0: GPT2Attention")
    assert got["mixtral"]["mlp"] == ["experts (4, top 2, width 64)"]
    assert got["qwen2_moe"]["mlp"] == [
        "experts (4, top 2, width 16) + shared expert",
        "gated (width 64)",
    ]

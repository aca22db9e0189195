"""Tests of workflow_scripts.evaluation.ablation: deactivation, random sets, ablation matrix.

Every check compares against an independent computation: the model's own forward one
text at a time for perplexity, and weights zeroed by hand in a deep copy for
deactivation (float64 where exactness matters).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import GATED
from test_perplexity import EVAL_TEXTS, MAX_LEN

from workflow_scripts.evaluation import ablation
from workflow_scripts.evaluation.ablation import (
    MATRIX_COLUMNS,
    ablation_matrix,
    all_units,
    base_perplexities,
    base_results,
    base_table,
    deactivated,
    random_like,
    units_from_table,
)
from workflow_scripts.evaluation.perplexity import perplexity


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    return EVAL_TEXTS(sentences)


def logits_of(model, tokenizer, texts) -> torch.Tensor:
    enc = tokenizer(texts[:3], return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad():
        return model(**enc).logits


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------- deactivation


def mlp_width(model) -> int:
    cfg = model.config
    if cfg.model_type == "bloom":
        return 4 * cfg.hidden_size
    return getattr(cfg, "n_inner", None) or cfg.intermediate_size


def widths(model, modules) -> dict[str, int]:
    """Units per layer of each module, read from the config and the raw projections."""
    out = {"mlp": mlp_width(model)}
    if any(m != "mlp" for m in modules):
        cfg = model.config
        if cfg.model_type in ("bloom", "gpt_neox"):  # per-head [q_h; k_h; v_h], no GQA
            return out | {m: cfg.hidden_size for m in "qkvo"}
        attn = model.model.layers[0].self_attn
        if hasattr(attn, "qkv_proj"):  # Phi-3: one [q; k; v] projection
            kv = cfg.num_key_value_heads * attn.head_dim
            out |= {"q": cfg.num_attention_heads * attn.head_dim, "k": kv, "v": kv}
        else:
            out |= {m: getattr(attn, f"{m}_proj").out_features for m in "qkv"}
        out["o"] = attn.o_proj.in_features
    return out


def mixed_units(model, modules=("mlp", "q", "k", "v", "o"), per=3, seed=0) -> list:
    """``per`` random units of every module in every layer."""
    rng = np.random.default_rng(seed)
    n = widths(model, modules)
    return [
        (layer, m, int(i))
        for layer in range(model.config.num_hidden_layers)
        for m in modules
        for i in rng.choice(n[m], per, replace=False)
    ]


def zero_by_hand(model, units) -> torch.nn.Module:
    """A deep copy with the units' rows/columns zeroed directly by parameter name."""
    out = copy.deepcopy(model)
    arch = model.config.model_type
    with torch.no_grad():
        for layer, module, i in units:
            if arch == "gpt2":  # Conv1D weights are [in, out]
                mlp = out.transformer.h[layer].mlp
                mlp.c_fc.weight[:, i] = 0
                mlp.c_fc.bias[i] = 0
                mlp.c_proj.weight[i, :] = 0
                continue
            if arch in ("bloom", "gpt_neox"):
                block = (out.transformer.h if arch == "bloom" else out.gpt_neox.layers)[layer]
                attn = getattr(block, "self_attention", None) or block.attention
                if module == "mlp":
                    block.mlp.dense_h_to_4h.weight[i, :] = 0
                    block.mlp.dense_h_to_4h.bias[i] = 0
                    block.mlp.dense_4h_to_h.weight[:, i] = 0
                elif module == "o":
                    attn.dense.weight[:, i] = 0
                else:  # row of head h, dim d in the per-head [q_h; k_h; v_h] layout
                    dim = model.config.hidden_size // model.config.num_attention_heads
                    row = (i // dim) * 3 * dim + "qkv".index(module) * dim + i % dim
                    attn.query_key_value.weight[row, :] = 0
                    attn.query_key_value.bias[row] = 0
                continue
            block = out.model.layers[layer]
            if module == "mlp" and arch == "starcoder2":  # plain MLP, nn.Linear [out, in]
                block.mlp.c_fc.weight[i, :] = 0
                block.mlp.c_fc.bias[i] = 0
                block.mlp.c_proj.weight[:, i] = 0
            elif module == "mlp" and arch == "phi3":  # fused [gate; up] rows
                fused = block.mlp.gate_up_proj.weight
                fused[i, :] = 0
                fused[fused.shape[0] // 2 + i, :] = 0
                block.mlp.down_proj.weight[:, i] = 0
            elif module == "mlp":
                block.mlp.gate_proj.weight[i, :] = 0
                block.mlp.up_proj.weight[i, :] = 0
                block.mlp.down_proj.weight[:, i] = 0
            elif module == "o":
                block.self_attn.o_proj.weight[:, i] = 0
            elif hasattr(block.self_attn, "qkv_proj"):  # Phi-3: rows [q; k; v]
                cfg, attn = model.config, block.self_attn
                n_q = cfg.num_attention_heads * attn.head_dim
                n_kv = cfg.num_key_value_heads * attn.head_dim
                attn.qkv_proj.weight[{"q": 0, "k": n_q, "v": n_q + n_kv}[module] + i, :] = 0
            else:
                proj = getattr(block.self_attn, f"{module}_proj")
                proj.weight[i, :] = 0
                if proj.bias is not None:
                    proj.bias[i] = 0
    return out


@pytest.mark.parametrize(
    "arch", ["qwen2_gqa", "llama", "gemma3_text", "phi3", "starcoder2", "gpt_neox", "bloom"]
)
def test_hooks_equal_weights_and_hand_zeroing(tiny_model, tiny_tokenizer, texts, arch):
    model = tiny_model(arch).double()
    units = mixed_units(model)
    base = logits_of(model, tiny_tokenizer, texts)
    with deactivated(model, units, mode="hooks"):
        hooked = logits_of(model, tiny_tokenizer, texts)
    with deactivated(model, units, mode="weights"):
        zeroed = logits_of(model, tiny_tokenizer, texts)
    by_hand = logits_of(zero_by_hand(model, units), tiny_tokenizer, texts)
    assert not torch.allclose(hooked, base, atol=1e-6)
    torch.testing.assert_close(hooked, zeroed, rtol=0, atol=1e-10)
    torch.testing.assert_close(hooked, by_hand, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["qwen2_gqa", "gemma3_text", "phi3"])
@pytest.mark.parametrize("module", ["mlp", "q", "k", "v", "o"])
def test_each_module_alone_matches_hand_zeroing(tiny_model, tiny_tokenizer, texts, arch, module):
    model = tiny_model(arch).double()
    units = mixed_units(model, modules=(module,), per=2, seed=1)
    with deactivated(model, units):
        hooked = logits_of(model, tiny_tokenizer, texts)
    by_hand = logits_of(zero_by_hand(model, units), tiny_tokenizer, texts)
    assert not torch.allclose(hooked, logits_of(model, tiny_tokenizer, texts), atol=1e-8)
    torch.testing.assert_close(hooked, by_hand, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["gpt2", "bloom", "gpt_neox"])
def test_plain_mlp_units(tiny_model, tiny_tokenizer, texts, arch):
    assert arch not in GATED
    model = tiny_model(arch).double()
    units = mixed_units(model, modules=("mlp",), per=5)
    with deactivated(model, units, mode="hooks"):
        hooked = logits_of(model, tiny_tokenizer, texts)
    with deactivated(model, units, mode="weights"):
        zeroed = logits_of(model, tiny_tokenizer, texts)
    by_hand = logits_of(zero_by_hand(model, units), tiny_tokenizer, texts)
    torch.testing.assert_close(hooked, zeroed, rtol=0, atol=1e-10)
    torch.testing.assert_close(hooked, by_hand, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["hooks", "weights"])
@pytest.mark.parametrize("fail", [False, True])
def test_deactivated_restores_model(tiny_model, tiny_tokenizer, texts, mode, fail):
    model = tiny_model("qwen2_gqa")
    units = mixed_units(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = logits_of(model, tiny_tokenizer, texts)
    assert hook_count(model) == 0
    if fail:
        with pytest.raises(RuntimeError, match="boom"), deactivated(model, units, mode=mode):
            logits_of(model, tiny_tokenizer, texts)
            raise RuntimeError("boom")
    else:
        with deactivated(model, units, mode=mode):
            inside = logits_of(model, tiny_tokenizer, texts)
            assert hook_count(model) == (5 * 2 if mode == "hooks" else 0)
        assert not torch.equal(inside, before)
    assert hook_count(model) == 0
    assert torch.equal(logits_of(model, tiny_tokenizer, texts), before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_deactivated_validates_before_changing(tiny_model):
    model = tiny_model("qwen2")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in [(0, "mlp", 64), (2, "q", 0), (0, "ffn", 0)]:
        with pytest.raises(ValueError), deactivated(model, [(0, "q", 1), bad], mode="weights"):
            pass
    with pytest.raises(ValueError, match="mode"), deactivated(model, [], mode="copy"):
        pass
    assert hook_count(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------- unit sets


def test_all_units_and_units_from_table(tiny_model):
    model = tiny_model("qwen2_gqa")
    counts = Counter(m for _, m, _ in all_units(model))
    assert counts == {"mlp": 2 * 64, "q": 2 * 32, "k": 2 * 16, "v": 2 * 16, "o": 2 * 32}
    assert Counter(m for _, m, _ in all_units(tiny_model("gpt2"), ["mlp"])) == {"mlp": 2 * 64}
    table = pa.table(
        {
            "layer": [0, 1, 1],
            "module": ["mlp", "q", "o"],
            "index": [3, 5, 7],
            "score": [0.1, 0.2, 0.3],
            "selected": [True, False, True],
        }
    )
    assert units_from_table(table) == [(0, "mlp", 3), (1, "o", 7)]


def test_random_like_strata_seed(tiny_model):
    candidates = all_units(tiny_model("qwen2_gqa"))
    selection = [(0, "mlp", i) for i in range(10)] + [(1, "k", 2), (1, "k", 9), (0, "o", 31)]
    draws = {s: random_like(selection, candidates, s) for s in range(4)}
    for drawn in draws.values():
        assert Counter((la, m) for la, m, _ in drawn) == Counter((la, m) for la, m, _ in selection)
        assert len(set(drawn)) == len(drawn)
        assert set(drawn) <= set(candidates)
    assert random_like(selection, candidates, 2) == draws[2]
    assert len({tuple(d) for d in draws.values()}) == 4
    with pytest.raises(ValueError, match="stratum"):
        random_like([(0, "k", i) for i in range(17)], candidates, 0)


# ---------------------------------------------------------------- ablation matrix


def test_ablation_matrix(tiny_model, tiny_tokenizer, sentences, caplog):
    model = tiny_model("qwen2").double()
    sel_en = [(0, "mlp", i) for i in range(8)] + [(1, "v", 3), (1, "o", 4)]
    sel_fr = [(1, "mlp", i) for i in range(20, 30)]
    selections = {"en": sel_en, "fr": sel_fr, "de": []}
    evals = {"en": sentences["en"][:3], "ru": sentences["ru"][:3]}
    kw = {"max_length": MAX_LEN, "batch_size": 2}
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.evaluation.perplexity"):
        table = ablation_matrix(model, tiny_tokenizer, selections, evals, n_random=2, seed=5, **kw)
    assert table.column_names == MATRIX_COLUMNS
    assert table.num_rows == 2 + 3 * 3 * 2
    rows = table.to_pylist()
    base = {r["eval_lang"]: r["ppl"] for r in rows if r["setting"] == "base"}
    for lang, ts in evals.items():
        assert base[lang] == pytest.approx(perplexity(model, tiny_tokenizer, ts, **kw).ppl)
    for r in rows:
        assert r["base_ppl"] == base[r["eval_lang"]]
        assert (r["seed"] == -1) == (r["setting"] != "random")
        # every document's NLL and tokens, which pool back to the row's perplexity
        assert len(r["doc_nll"]) == len(r["doc_tokens"]) == len(evals[r["eval_lang"]])
        pooled = math.exp(sum(r["doc_nll"]) / sum(r["doc_tokens"]))
        assert pooled == pytest.approx(r["ppl"], rel=1e-9)
        if r["setting"] == "base":
            assert r["target_lang"] is None and r["n_units"] == 0
    random_rows = [r for r in rows if r["setting"] == "random"]
    assert sorted({r["seed"] for r in random_rows}) == [5, 6]
    for r in rows:
        if r["target_lang"] == "de":
            assert r["n_units"] == 0 and r["ppl"] == r["base_ppl"]
        elif r["target_lang"] is not None:
            assert r["n_units"] == 10 and r["ppl"] != r["base_ppl"]
    assert "'de'" in caplog.text
    (sel,) = [
        r
        for r in rows
        if (r["setting"], r["target_lang"], r["eval_lang"]) == ("selected", "en", "ru")
    ]
    with deactivated(model, sel_en):
        assert sel["ppl"] == pytest.approx(perplexity(model, tiny_tokenizer, evals["ru"], **kw).ppl)
    (rnd,) = [
        r for r in random_rows if (r["target_lang"], r["eval_lang"], r["seed"]) == ("fr", "en", 6)
    ]
    with deactivated(model, random_like(sel_fr, all_units(model, ["mlp", "o", "v"]), 6)):
        assert rnd["ppl"] == pytest.approx(perplexity(model, tiny_tokenizer, evals["en"], **kw).ppl)


def test_the_base_jobs_perplexities_replace_the_computed_ones(
    tiny_model, tiny_tokenizer, sentences
):
    """A base job's table, read back, gives the same matrix as computing the base in the job;
    a language the base jobs lack is computed."""
    model = tiny_model("qwen2").double()
    evals = {"en": sentences["en"][:3], "ru": sentences["ru"][:3]}
    kw = {"max_length": MAX_LEN, "batch_size": 2}
    selections = {"en": [(0, "mlp", i) for i in range(8)]}
    alone = ablation_matrix(model, tiny_tokenizer, selections, evals, n_random=1, **kw)
    base = base_results(
        base_table(base_perplexities(model, tiny_tokenizer, {"en": evals["en"]}, **kw))
    )
    assert set(base) == {"en"} and base["en"].n_tokens == sum(base["en"].doc_tokens)
    given = ablation_matrix(model, tiny_tokenizer, selections, evals, n_random=1, base=base, **kw)
    assert given.to_pylist() == alone.to_pylist()


def test_ablation_matrix_rejects_bad_input_before_computing(
    tiny_model, tiny_tokenizer, monkeypatch
):
    with pytest.raises(ValueError, match="'xx'"):  # model=None: nothing may be computed
        ablation_matrix(None, None, {"en": [(0, "mlp", 1)]}, {"en": ["a b"], "xx": []})
    model = tiny_model("qwen2")
    calls = []
    orig = ablation.perplexity
    monkeypatch.setattr(ablation, "perplexity", lambda *a, **k: calls.append(1) or orig(*a, **k))
    with pytest.raises(ValueError, match="999"):
        ablation_matrix(model, tiny_tokenizer, {"en": [(0, "mlp", 999)]}, {"en": ["a b c"]})
    assert not calls

"""Tests of workflow_scripts.evaluation.ablation: perplexity, deactivation, random sets, ablation matrix.

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

from workflow_scripts.evaluation import ablation
from workflow_scripts.evaluation.ablation import (
    MATRIX_COLUMNS,
    ablation_matrix,
    all_units,
    deactivated,
    perplexity,
    random_like,
    units_from_table,
)

MAX_LEN = 24


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    return sentences["en"][:4] + sentences["zh"][:2] + sentences["ru"][:2] + ["x"]


def direct_nll(model, tokenizer, texts, max_length=MAX_LEN) -> list[float]:
    """Per predicted token NLL from ``model(input_ids).logits``, one text at a time."""
    out: list[float] = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            if len(ids) < 2:
                continue
            logits = model(torch.tensor([ids])).logits[0, :-1]
            logp = torch.log_softmax(logits.double(), dim=-1)
            out += (-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]).tolist()
    return out


def direct_ppl(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll))


def logits_of(model, tokenizer, texts) -> torch.Tensor:
    enc = tokenizer(texts[:3], return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad():
        return model(**enc).logits


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("arch", ["qwen2", "gpt2", "bloom", "gemma3_text"])
def test_perplexity_equals_direct(tiny_model, tiny_tokenizer, texts, arch, monkeypatch):
    model = tiny_model(arch).double()
    monkeypatch.setattr(ablation, "MAX_LOGITS", 3 * model.config.vocab_size)  # 3-row chunks
    res = perplexity(model, tiny_tokenizer, texts, max_length=MAX_LEN, batch_size=3)
    nll = direct_nll(model, tiny_tokenizer, texts)
    assert res.n_tokens == len(nll)
    assert res.nll_sum == pytest.approx(sum(nll), rel=1e-10)
    assert res.ppl == pytest.approx(direct_ppl(nll), rel=1e-10)


def test_perplexity_float32_within_1e5(tiny_model, tiny_tokenizer, texts):
    model = tiny_model("qwen2")
    res = perplexity(model, tiny_tokenizer, texts, max_length=MAX_LEN)
    assert res.ppl == pytest.approx(direct_ppl(direct_nll(model, tiny_tokenizer, texts)), rel=1e-5)


@pytest.mark.parametrize("cap", [30.0, 0.5])
def test_perplexity_gemma_final_logit_softcapping(tiny_model, tiny_tokenizer, texts, cap):
    model = tiny_model("gemma3_text").double()
    plain = perplexity(model, tiny_tokenizer, texts, max_length=MAX_LEN).ppl
    model.config.final_logit_softcapping = cap
    res = perplexity(model, tiny_tokenizer, texts, max_length=MAX_LEN)
    assert res.ppl == pytest.approx(direct_ppl(direct_nll(model, tiny_tokenizer, texts)), rel=1e-10)
    if cap < 1:  # a small cap changes the result, so it was applied
        assert abs(res.ppl - plain) > 1e-3 * plain


def test_perplexity_batch_and_padding_invariant(tiny_model, tiny_tokenizer, texts):
    model = tiny_model("llama").double()
    left = copy.deepcopy(tiny_tokenizer)
    left.padding_side = "left"
    ref = perplexity(model, tiny_tokenizer, texts, max_length=MAX_LEN, batch_size=1)
    for tok, bs in [(tiny_tokenizer, 2), (tiny_tokenizer, 16), (left, 3)]:
        res = perplexity(model, tok, texts, max_length=MAX_LEN, batch_size=bs)
        assert res.n_tokens == ref.n_tokens
        assert res.ppl == pytest.approx(ref.ppl, rel=1e-12)
    assert left.padding_side == "left"  # never mutated


def test_perplexity_max_tokens_budget(tiny_model, tiny_tokenizer, texts):
    model = tiny_model("qwen2").double()
    nll = direct_nll(model, tiny_tokenizer, texts)
    for budget in (1, 7, len(nll) // 2):
        for bs in (1, 4):
            res = perplexity(
                model, tiny_tokenizer, texts, max_length=MAX_LEN, batch_size=bs, max_tokens=budget
            )
            assert res.n_tokens == budget
            assert res.ppl == pytest.approx(direct_ppl(nll[:budget]), rel=1e-10)
    full = perplexity(model, tiny_tokenizer, texts, max_length=MAX_LEN, max_tokens=10**6)
    assert full.n_tokens == len(nll)
    assert full.ppl == pytest.approx(direct_ppl(nll), rel=1e-10)


def test_perplexity_rejects_nothing_to_predict(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="no text"):
        perplexity(tiny_model("qwen2"), tiny_tokenizer, [])


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
        attn = model.model.layers[0].self_attn
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
            if arch == "bloom":
                mlp = out.transformer.h[layer].mlp
                mlp.dense_h_to_4h.weight[i, :] = 0
                mlp.dense_h_to_4h.bias[i] = 0
                mlp.dense_4h_to_h.weight[:, i] = 0
                continue
            block = out.model.layers[layer]
            if module == "mlp":
                block.mlp.gate_proj.weight[i, :] = 0
                block.mlp.up_proj.weight[i, :] = 0
                block.mlp.down_proj.weight[:, i] = 0
            elif module == "o":
                block.self_attn.o_proj.weight[:, i] = 0
            else:
                proj = getattr(block.self_attn, f"{module}_proj")
                proj.weight[i, :] = 0
                if proj.bias is not None:
                    proj.bias[i] = 0
    return out


@pytest.mark.parametrize("arch", ["qwen2_gqa", "llama", "gemma3_text"])
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


@pytest.mark.parametrize("arch", ["qwen2_gqa", "gemma3_text"])
@pytest.mark.parametrize("module", ["mlp", "q", "k", "v", "o"])
def test_each_module_alone_matches_hand_zeroing(tiny_model, tiny_tokenizer, texts, arch, module):
    model = tiny_model(arch).double()
    units = mixed_units(model, modules=(module,), per=2, seed=1)
    with deactivated(model, units):
        hooked = logits_of(model, tiny_tokenizer, texts)
    by_hand = logits_of(zero_by_hand(model, units), tiny_tokenizer, texts)
    assert not torch.allclose(hooked, logits_of(model, tiny_tokenizer, texts), atol=1e-8)
    torch.testing.assert_close(hooked, by_hand, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["gpt2", "bloom"])
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
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.evaluation.ablation"):
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


def test_evaluation_language_without_eval_split_is_left_out(tmp_path, caplog):
    from conftest import write_corpus

    from workflow_scripts.evaluation.ablation import evaluation_texts

    good = write_corpus(tmp_path / "en.parquet", ["one text here", "two texts here"])
    train_only = write_corpus(tmp_path / "fr.parquet", [{"text": "un texte", "split": "train"}])
    with caplog.at_level(logging.WARNING):
        texts, skipped = evaluation_texts({"en": str(good), "fr": str(train_only)}, "eval", 5)
    assert list(texts) == ["en"] and len(texts["en"]) == 2 and skipped == ["fr"]
    assert "evaluation language fr left out" in caplog.text and "no documents" in caplog.text
    with pytest.raises(ValueError, match=r"no evaluation language has 'eval' documents: \['fr'\]"):
        evaluation_texts({"fr": str(train_only)}, "eval", 5)

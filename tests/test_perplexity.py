"""Tests of workflow_scripts.evaluation.perplexity against the model's own forward, one
text at a time (float64 where exactness matters)."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from workflow_scripts.evaluation import perplexity as ppl_mod
from workflow_scripts.evaluation.perplexity import perplexity

MAX_LEN = 24


def EVAL_TEXTS(sentences) -> list[str]:
    """Several scripts and lengths, and a text with nothing to predict."""
    return sentences["en"][:4] + sentences["zh"][:2] + sentences["ru"][:2] + ["x"]


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    return EVAL_TEXTS(sentences)


def direct_doc_nll(model, tokenizer, texts, max_length=MAX_LEN) -> list[list[float]]:
    """Per predicted token NLL from ``model(input_ids).logits``, one text at a time, per
    text with a token to predict."""
    out: list[list[float]] = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            if len(ids) < 2:
                continue
            logits = model(torch.tensor([ids])).logits[0, :-1]
            logp = torch.log_softmax(logits.double(), dim=-1)
            out.append((-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]).tolist())
    return out


def direct_nll(model, tokenizer, texts, max_length=MAX_LEN) -> list[float]:
    return [x for doc in direct_doc_nll(model, tokenizer, texts, max_length) for x in doc]


def direct_ppl(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll))


# --------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("arch", ["qwen2", "gpt2", "bloom", "gemma3_text"])
def test_perplexity_equals_direct(tiny_model, tiny_tokenizer, texts, arch, monkeypatch):
    model = tiny_model(arch).double()
    # 3-row chunks, the vocabulary in slices of a third (running log-sum-exp)
    monkeypatch.setattr(ppl_mod, "MAX_LOGITS", 3 * model.config.vocab_size)
    monkeypatch.setattr(ppl_mod, "VOCAB_SLICE", model.config.vocab_size // 3)
    res = perplexity(model, tiny_tokenizer, texts, max_length=MAX_LEN, batch_size=3)
    docs = direct_doc_nll(model, tiny_tokenizer, texts)
    nll = [x for doc in docs for x in doc]
    assert res.n_tokens == len(nll)
    assert res.nll_sum == pytest.approx(sum(nll), rel=1e-10)
    assert res.ppl == pytest.approx(direct_ppl(nll), rel=1e-10)
    # per document, in text order (the text with nothing to predict left out)
    assert res.doc_tokens == tuple(len(doc) for doc in docs)
    assert res.doc_nll == pytest.approx([sum(doc) for doc in docs], rel=1e-10)


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


def test_evaluation_language_without_eval_split_is_left_out(tmp_path, caplog):
    from conftest import write_corpus

    from workflow_scripts.evaluation.perplexity import evaluation_texts

    good = write_corpus(tmp_path / "en.parquet", ["one text here", "two texts here"])
    train_only = write_corpus(tmp_path / "fr.parquet", [{"text": "un texte", "split": "train"}])
    with caplog.at_level(logging.WARNING):
        texts, skipped = evaluation_texts({"en": str(good), "fr": str(train_only)}, "eval", 5)
    assert list(texts) == ["en"] and len(texts["en"]) == 2 and skipped == ["fr"]
    assert "evaluation language fr left out" in caplog.text and "no documents" in caplog.text
    with pytest.raises(ValueError, match=r"no evaluation language has 'eval' documents: \['fr'\]"):
        evaluation_texts({"fr": str(train_only)}, "eval", 5)

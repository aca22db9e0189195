"""Logit lens against direct, one-text-at-a-time computations.

Models run in float64 (``.double()``, Bloom in float32 as in test_actcount) so
that batched, chunked and direct computations pick the same top-k tokens. A stub
classifier maps token ids to languages deterministically, so counts are exact.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import ARCHS, synthetic_sentences
from torch import nn

from workflow_scripts.models.anatomy import final_norm_module
from workflow_scripts.neurons.logit_lens import (
    corpus_logit_lens,
    encode_right_padded,
    lens_top_k,
    logit_lens,
    predicted_language_share,
)

_S = synthetic_sentences(seed=2)
# different lengths (so batches are padded), several scripts
TEXTS = [_S["fr"][0], _S["en"][1][:15], _S["zh"][2], " ".join(_S["de"][3:5]), _S["ru"][4][:10]]
# where each architecture keeps its final norm: (attribute of the model, attribute of that)
NORM_PATH = {"gpt2": ("transformer", "ln_f"), "bloom": ("transformer", "ln_f")}
NORM_PATH["gpt_neox"] = ("gpt_neox", "final_layer_norm")


class StubClassifier:
    """id % 3 == 0 -> en, 1 -> ``lang``, 2 -> None; records the ids of every call."""

    def __init__(self, lang: str):
        self.lang = lang
        self.calls: list[list[int]] = []

    def code(self, i: int) -> str | None:
        return ("en", self.lang, None)[i % 3]

    def classify_ids(self, tokenizer, ids):
        self.calls.append(list(ids))
        return [self.code(i) for i in ids]


def _model(tiny_model, arch, double=True):
    """Tiny model with random norm weights (at init an RMSNorm only rescales each position,
    which leaves the top-k unchanged and would make ``final_norm`` untestable)."""
    model = tiny_model(arch)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 and ("norm" in name or "ln" in name):
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
    return model if arch == "bloom" or not double else model.double()


def _counts(table) -> dict[tuple[int, str], int]:
    rows = table.to_pylist()
    return {(r["layer"], r["lang_of_token"]): r["count"] for r in rows}


def _direct_counts(model, tokenizer, texts, stub, top_k, final_norm):
    """One text at a time, position by position, from ``output_hidden_states``.

    Layer i < L-1 is ``hidden_states[i + 1]``; transformers returns the last
    entry after the final norm, so the raw last layer comes from a copy of the
    model whose final norm is replaced by the identity.
    """
    owner, name = NORM_PATH.get(model.config.model_type, ("model", "norm"))
    norm = getattr(getattr(model, owner), name)
    raw = copy.deepcopy(model)
    setattr(getattr(raw, owner), name, nn.Identity())
    weight = model.get_output_embeddings().weight
    n_layers = model.config.num_hidden_layers
    counts: dict[tuple[int, str], int] = {}
    for text in texts:
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            normed = model(ids, output_hidden_states=True).hidden_states
            plain = raw(ids, output_hidden_states=True).hidden_states
            for layer in range(n_layers):
                last = layer == n_layers - 1
                if final_norm:
                    h = normed[layer + 1][0] if last else norm(normed[layer + 1][0])
                else:
                    h = plain[layer + 1][0]
                for t in range(h.shape[0]):
                    for i in (h[t] @ weight.T).topk(top_k).indices.tolist():
                        cat = stub.code(i) or "other"
                        counts[(layer, cat)] = counts.get((layer, cat), 0) + 1
    return counts


def test_ratios_sum_to_one_and_token_count(tiny_model, tiny_tokenizer):
    model = _model(tiny_model, "qwen2")
    table = logit_lens(model, tiny_tokenizer, TEXTS, "fr", StubClassifier("fr"), top_k=3)
    assert table.column_names == ["layer", "lang_of_token", "count", "ratio", "n_tokens"]
    assert str(table.schema.field("layer").type) == "int32"
    assert str(table.schema.field("ratio").type) == "double"
    assert str(table.schema.field("n_tokens").type) == "int64"
    df = table.to_pandas()
    n_positions = sum(len(tiny_tokenizer(t)["input_ids"]) for t in TEXTS)
    assert sorted(df.layer.unique()) == [0, 1]
    for _, group in df.groupby("layer"):
        assert list(group.lang_of_token) == ["en", "fr", "other"]
        assert group.ratio.sum() == pytest.approx(1.0, abs=1e-12)
        assert (group.n_tokens == 3 * n_positions).all()
        assert group["count"].sum() == 3 * n_positions
    assert (
        predicted_language_share(table)["fr"].tolist()
        == df[df.lang_of_token == "fr"].ratio.tolist()
    )


def test_english_input_has_two_categories(tiny_model, tiny_tokenizer):
    table = logit_lens(tiny_model("llama"), tiny_tokenizer, TEXTS[:2], "en", StubClassifier("en"))
    assert table.column("lang_of_token").to_pylist() == ["en", "other"] * 2
    counts = _counts(table)
    assert counts[(0, "en")] > 0 and counts[(0, "other")] > 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("final_norm", [False, True])
def test_counts_equal_direct_computation(tiny_model, tiny_tokenizer, arch, final_norm):
    model = _model(tiny_model, arch)
    stub = StubClassifier("fr")
    table = logit_lens(
        model, tiny_tokenizer, TEXTS, "fr", stub, top_k=4, batch_size=3, final_norm=final_norm
    )
    expected = _direct_counts(model, tiny_tokenizer, TEXTS, stub, 4, final_norm)
    assert _counts(table) == {k: expected.get(k, 0) for k in _counts(table)}
    assert all(len(ids) == len(set(ids)) for ids in stub.calls)  # distinct ids per call


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2", "gemma3_text"])
def test_batched_and_chunked_equal_one_by_one(tiny_model, tiny_tokenizer, arch):
    model = _model(tiny_model, arch)
    stub = StubClassifier("de")
    batched = logit_lens(model, tiny_tokenizer, TEXTS, "de", stub, batch_size=5)
    single = logit_lens(model, tiny_tokenizer, TEXTS, "de", stub, batch_size=1)
    chunked = logit_lens(model, tiny_tokenizer, TEXTS, "de", stub, batch_size=2, max_chunk_bytes=1)
    assert batched.equals(single)
    assert batched.equals(chunked)


@pytest.mark.parametrize("arch", ARCHS)
def test_last_layer_with_final_norm_is_the_model_prediction(tiny_model, tiny_tokenizer, arch):
    """Exactly ``model(...).logits`` top-k at every non-pad position of a padded batch."""
    model = _model(tiny_model, arch, double=False)  # float32: the real dtype
    input_ids, mask = encode_right_padded(tiny_tokenizer, TEXTS, max_length=64)
    assert mask.sum(1).tolist() != [mask.shape[1]] * len(TEXTS)  # really padded
    tops = lens_top_k(model, input_ids, mask, top_k=5, final_norm=True, max_chunk_bytes=4000)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    assert torch.equal(tops[-1], logits[mask.bool()].topk(5, dim=-1).indices)
    raw = lens_top_k(model, input_ids, mask, top_k=5, final_norm=False)
    assert not torch.equal(raw[-1], tops[-1])  # the option changes something


@pytest.mark.parametrize("arch", ARCHS)
def test_final_norm_module(tiny_model, arch):
    model = tiny_model(arch)
    owner, name = NORM_PATH.get(arch, ("model", "norm"))
    assert final_norm_module(model) is getattr(getattr(model, owner), name)


def test_tokenizer_without_pad_token_is_not_mutated(tiny_model, tiny_tokenizer):
    model = tiny_model("qwen2")
    stub = StubClassifier("fr")
    no_pad = copy.deepcopy(tiny_tokenizer)
    no_pad.pad_token = None
    before = (no_pad.pad_token, no_pad.padding_side, tiny_tokenizer.padding_side)
    expected = logit_lens(model, tiny_tokenizer, TEXTS, "fr", stub)
    assert logit_lens(model, no_pad, TEXTS, "fr", stub).equals(expected)
    assert (no_pad.pad_token, no_pad.padding_side, tiny_tokenizer.padding_side) == before


def test_max_length_truncates(tiny_model, tiny_tokenizer):
    table = logit_lens(
        tiny_model("qwen2"), tiny_tokenizer, TEXTS, "fr", StubClassifier("fr"), 2, max_length=3
    )
    assert table.column("n_tokens")[0].as_py() == 2 * 3 * len(TEXTS)


def test_no_texts_is_an_error(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="no texts"):
        logit_lens(tiny_model("qwen2"), tiny_tokenizer, [], "fr", StubClassifier("fr"))


def test_real_classifier_and_metadata(tiny_model, tiny_tokenizer):
    """End to end with the real language identifier."""
    table, meta = corpus_logit_lens(
        tiny_model("llama"), tiny_tokenizer, _S["fr"][:4], "fr", ["en", "fr", "zh"]
    )
    assert meta["n_texts"] == 4 and meta["final_norm"] is False and meta["lang"] == "fr"
    assert meta["languages"] == ["en", "fr", "zh"]
    share = predicted_language_share(table)
    assert set(share) == {"en", "fr", "other"}
    assert np.allclose(sum(share.values()), 1.0)

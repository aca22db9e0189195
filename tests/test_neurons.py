"""Per-language statistics and selections of plnd, lape and actcount against direct computations."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import synthetic_sentences

from workflow_scripts.neurons.actcount import ActivationCounts, peak_neurons
from workflow_scripts.neurons.lape import lape_select
from workflow_scripts.neurons.plnd import plnd_scores
from workflow_scripts.neurons.selection import (
    plnd_stats,
    select_actcount,
    select_lape,
    select_plnd,
)

SETTINGS = {
    "variant": "paper",
    "parts": ["ffn", "q", "k", "v", "o"],
    "top_fraction": 0.25,
    "batch_size": 2,
    "max_length": 16,
}


def _stats_table(freq: list[int], n_docs: int) -> pa.Table:
    n = len(freq)
    return pa.table(
        {
            "layer": np.zeros(n, dtype=np.int32),
            "module": ["mlp"] * n,
            "index": np.arange(n, dtype=np.int32),
            "frequency": np.array(freq, dtype=np.int64),
            "n_docs": np.full(n, n_docs, dtype=np.int64),
            "score": np.linspace(0, 1, n),
        }
    )


def test_plnd_stats_equal_a_direct_count(tiny_model, tiny_tokenizer):
    model = tiny_model("qwen2")
    texts = synthetic_sentences()["en"][:5]
    table = plnd_stats(model, tiny_tokenizer, texts, SETTINGS)
    # direct: every document alone, per (layer, part) top 25% by the l2 reduction
    freq: dict[tuple[int, str], torch.Tensor] = {}
    for text in texts:
        enc = tiny_tokenizer([text], return_tensors="pt", truncation=True, max_length=16)
        with torch.inference_mode():
            scores = plnd_scores(model, enc["input_ids"], enc["attention_mask"])
        for key, s in scores.items():
            values = s.l2[0].double()
            k = int(np.ceil(0.25 * values.numel()))
            top = torch.zeros_like(values, dtype=torch.bool)
            top[values.topk(k).indices] = True
            freq[key] = freq.get(key, 0) + top.long()
    module_of = {"ffn": "mlp", "q": "q", "k": "k", "v": "v", "o": "o"}
    got = {
        (layer, module, index): f
        for layer, module, index, f in zip(
            table["layer"].to_pylist(),
            table["module"].to_pylist(),
            table["index"].to_pylist(),
            table["frequency"].to_pylist(),
            strict=True,
        )
    }
    for (layer, part), f in freq.items():
        for index, value in enumerate(f.tolist()):
            assert got[(layer, module_of[part], index)] == value
    assert set(table["n_docs"].to_pylist()) == {5}
    assert set(table["module"].to_pylist()) == {"mlp", "q", "k", "v", "o"}


def test_plnd_stats_do_not_depend_on_the_batch_size(tiny_model, tiny_tokenizer):
    model = tiny_model("llama")
    texts = synthetic_sentences()["fr"][:5]
    a = plnd_stats(model, tiny_tokenizer, texts, {**SETTINGS, "batch_size": 1})
    b = plnd_stats(model, tiny_tokenizer, texts, {**SETTINGS, "batch_size": 3})
    assert a["frequency"].to_pylist() == b["frequency"].to_pylist()
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-5)


def test_select_plnd_specific_minus_agnostic():
    stats = {
        "en": _stats_table([4, 4, 0, 3, 4], 4),
        "fr": _stats_table([4, 0, 4, 4, 4], 4),
        "zh": _stats_table([4, 4, 4, 0, 1], 4),
    }
    out = select_plnd(stats, min_fraction=1.0, agnostic_languages=["en", "fr", "zh"])
    # neuron 0 is specific for all three -> agnostic, removed everywhere
    assert out["en"]["selected"].to_pylist() == [False, True, False, False, True]
    assert out["fr"]["selected"].to_pylist() == [False, False, True, True, True]
    assert out["zh"]["selected"].to_pylist() == [False, True, True, False, False]
    assert out["en"]["agnostic"].to_pylist() == [True, False, False, False, False]
    relaxed = select_plnd(stats, min_fraction=0.75, agnostic_languages=["en", "fr"])
    # 0.75 * 4 = 3 documents suffice; agnostic = specific for en and fr: neurons 0, 3, 4
    assert relaxed["en"]["selected"].to_pylist() == [False, True, False, False, False]
    assert relaxed["zh"]["selected"].to_pylist() == [False, True, True, False, False]


def test_select_plnd_errors():
    stats = {"en": _stats_table([1, 2], 2), "fr": _stats_table([1, 2, 3], 2)}
    with pytest.raises(ValueError, match="agnostic languages \\['de'\\]"):
        select_plnd(stats, 1.0, ["de"])
    with pytest.raises(ValueError, match="'fr'"):
        select_plnd(stats, 1.0, ["en"])


def _counts(matrix: np.ndarray, n: int) -> pa.Table:
    acc = ActivationCounts(
        torch.tensor(matrix, dtype=torch.int64),
        torch.zeros(matrix.shape[0], dtype=torch.float64),
        torch.zeros(matrix.shape[0], dtype=torch.float64),
        torch.full((matrix.shape[0],), n, dtype=torch.int64),
    )
    return acc.count_table()


def test_select_lape_equals_lape_on_probabilities():
    rng = np.random.default_rng(0)
    mats = {lang: rng.integers(0, 50, size=(3, 20)) for lang in ("en", "fr", "zh")}
    out = select_lape({k: _counts(m, 50) for k, m in mats.items()}, 0.1, 90)
    direct = lape_select(np.stack([m / 50 for m in mats.values()]), 0.1, 90)
    for i, lang in enumerate(mats):
        assert out[lang]["selected"].to_pylist() == direct.assigned[i].ravel().tolist()
        np.testing.assert_allclose(out[lang]["score"].to_numpy(), (mats[lang] / 50).ravel())
    assert set(out["en"]["module"].to_pylist()) == {"mlp"}


def test_select_actcount_peaks_of_no_other_language():
    rng = np.random.default_rng(1)
    mats = {lang: rng.integers(0, 100, size=(2, 30)) for lang in ("en", "fr", "zh")}
    out = select_actcount({k: _counts(m, 100) for k, m in mats.items()}, 0.2)
    peaks = {k: peak_neurons(m, 0.2) for k, m in mats.items()}
    for lang in mats:
        others = np.logical_or.reduce([peaks[o] for o in mats if o != lang])
        assert out[lang]["selected"].to_pylist() == (peaks[lang] & ~others).ravel().tolist()

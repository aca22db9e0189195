"""Activation counting against direct, one-prompt-at-a-time computations.

Models run in float64 (``.double()``) so that batched and unbatched runs agree
exactly; Bloom stays float32 because transformers' Bloom yields NaN logits for
left-padded rows in float64 (not a library issue; float32 agrees exactly too).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_SPEC, direct_capture, synthetic_sentences
from transformers import AutoModelForCausalLM

from workflow_scripts.models.anatomy import mlp_sites
from workflow_scripts.models.tiny import build_config
from workflow_scripts.neurons.actcount import ActivationCounts, count_activations, peak_neurons

_S = synthetic_sentences(seed=1)
# different lengths (so batches are padded), several scripts
PROMPTS = [
    _S["en"][0],
    _S["fr"][1][:18],
    _S["zh"][2],
    " ".join(_S["de"][3:5]),
    _S["ru"][4][:12],
]


def _model(tiny_model, arch):
    model = tiny_model(arch)
    return model if arch == "bloom" else model.double()


class Reference:
    """Accumulators computed directly (numpy/torch, no library code) in float64."""

    def __init__(self, n_layers, width):
        self.counts = torch.zeros(n_layers, width, dtype=torch.int64)
        self.inhibited = torch.zeros(n_layers, dtype=torch.float64)
        self.zeros = torch.zeros(n_layers, dtype=torch.float64)
        self.n = torch.zeros(n_layers, dtype=torch.int64)

    def add(self, layer, acts):  # acts [N, I]
        self.counts[layer] += (acts > 0).sum(0)
        self.inhibited[layer] += (acts <= 0).double().mean(-1).sum()
        self.zeros[layer] += (acts == 0).double().mean(-1).sum()
        self.n[layer] += acts.shape[0]


def _reference_all(model, tokenizer, prompts, max_length=512):
    """Teacher-forced, one prompt at a time (no padding), every token."""
    sites = mlp_sites(model)
    ref = Reference(len(sites), sites[0].size)
    for p in prompts:
        ids = tokenizer([p], return_tensors="pt")["input_ids"][:, :max_length]
        with direct_capture(model) as acts, torch.no_grad():
            model(input_ids=ids)
        for layer, (a,) in acts.items():
            ref.add(layer, a[0])
    return ref


def _greedy_reference(model, tokenizer, prompt, max_new_tokens, eos_ids, ref=None):
    """Greedy decoding without KV cache, batch 1, recording the last position of each
    forward call until EOS is generated. Returns (generated token ids, ref)."""
    sites = mlp_sites(model)
    ref = ref or Reference(len(sites), sites[0].size)
    ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
    generated = []
    for _ in range(max_new_tokens):
        with direct_capture(model) as acts, torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        for layer, (a,) in acts.items():
            ref.add(layer, a[0, -1:])
        nxt = int(logits[0, -1].argmax())
        generated.append(nxt)
        if nxt in eos_ids:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return generated, ref


def _with_eos(tokenizer, model, eos_id):
    """A copy of the tokenizer (and the model, in place) whose EOS is ``eos_id``."""
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    assert tok.eos_token_id == eos_id
    model.generation_config.eos_token_id = eos_id
    model.config.eos_token_id = eos_id
    return tok


def _assert_same(got: ActivationCounts, ref: Reference):
    assert torch.equal(got.counts, ref.counts)
    assert torch.equal(got.n_positions, ref.n)
    assert (got.column_positions == ref.n[:, None]).all()
    assert torch.allclose(got.inhibited, ref.inhibited, rtol=1e-12, atol=1e-9)
    assert torch.allclose(got.zeros, ref.zeros, rtol=1e-12, atol=1e-9)


# --------------------------------------------------------------------------- positions="all"


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text", "gpt2", "bloom", "qwen2_gqa"])
def test_all_positions_equal_direct_count(tiny_model, tiny_tokenizer, arch):
    model = _model(tiny_model, arch)
    got = count_activations(model, tiny_tokenizer, PROMPTS, positions="all", batch_size=3)
    ref = _reference_all(model, tiny_tokenizer, PROMPTS)
    n_tokens = sum(len(tiny_tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert ref.n.tolist() == [n_tokens] * 2
    # batched and right-padded, yet pad positions are not counted
    _assert_same(got, ref)
    assert got.counts.dtype == torch.int64
    assert got.counts.sum() > 0
    assert (got.counts <= got.n_positions[:, None]).all()
    assert got.info["positions"] == "all"
    assert got.info["n_prompts"] == len(PROMPTS)


def test_all_positions_respects_max_length(tiny_model, tiny_tokenizer):
    model = _model(tiny_model, "qwen2")
    got = count_activations(
        model, tiny_tokenizer, PROMPTS, positions="all", batch_size=2, max_length=6
    )
    ref = _reference_all(model, tiny_tokenizer, PROMPTS, max_length=6)
    expected = sum(min(6, len(tiny_tokenizer(p)["input_ids"])) for p in PROMPTS)
    assert int(got.n_positions[0]) == expected
    _assert_same(got, ref)


def test_all_positions_independent_of_batch_size_and_order(tiny_model, tiny_tokenizer):
    model = _model(tiny_model, "llama")
    a = count_activations(model, tiny_tokenizer, PROMPTS, positions="all", batch_size=5)
    b = count_activations(model, tiny_tokenizer, PROMPTS[::-1], positions="all", batch_size=1)
    assert torch.equal(a.counts, b.counts)
    assert torch.equal(a.n_positions, b.n_positions)


# --------------------------------------------------------------------- positions="generated"


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text", "gpt2", "bloom", "mistral"])
def test_generated_batched_equals_alone(tiny_model, tiny_tokenizer, arch):
    model = _model(tiny_model, arch)
    prompts = PROMPTS[:3]
    batched = count_activations(
        model, tiny_tokenizer, prompts, positions="generated", batch_size=3, max_new_tokens=5
    )
    alone = count_activations(
        model, tiny_tokenizer, prompts, positions="generated", batch_size=1, max_new_tokens=5
    )
    assert torch.equal(batched.counts, alone.counts)
    assert torch.equal(batched.n_positions, alone.n_positions)
    assert torch.allclose(batched.inhibited, alone.inhibited, rtol=1e-12)
    assert torch.allclose(batched.zeros, alone.zeros, rtol=1e-12)
    assert batched.info["max_new_tokens"] == 5


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_generated_equals_greedy_reference_without_eos(tiny_model, tiny_tokenizer, arch):
    """With an EOS the model never produces: max_new_tokens forward calls per prompt."""
    model = _model(tiny_model, arch)
    max_new = 4
    produced = set()
    for p in PROMPTS[:3]:
        produced |= set(_greedy_reference(model, tiny_tokenizer, p, max_new, set())[0])
    never = next(i for i in range(4, len(tiny_tokenizer)) if i not in produced)
    tok = _with_eos(tiny_tokenizer, model, never)

    ref = None
    for p in PROMPTS[:3]:
        gen, ref = _greedy_reference(model, tok, p, max_new, {never}, ref)
        assert len(gen) == max_new
    got = count_activations(
        model, tok, PROMPTS[:3], positions="generated", batch_size=3, max_new_tokens=max_new
    )
    # one recorded position per forward call and sequence: the prompt's last token,
    # then every generated token but the last
    assert got.n_positions.tolist() == [max_new * 3] * 2
    _assert_same(got, ref)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text", "gpt2"])
def test_generated_stops_recording_after_eos(tiny_model, tiny_tokenizer, arch):
    model = _model(tiny_model, arch)
    max_new = 6
    first = _greedy_reference(model, tiny_tokenizer, PROMPTS[0], 1, set())[0][0]
    tok = _with_eos(tiny_tokenizer, model, first)

    alone = count_activations(
        model, tok, [PROMPTS[0]], positions="generated", batch_size=1, max_new_tokens=max_new
    )
    assert alone.n_positions.tolist() == [1, 1], "EOS at once: only the prompt's last token"

    ref = None
    lengths = []
    for p in PROMPTS[:3]:
        gen, ref = _greedy_reference(model, tok, p, max_new, {first}, ref)
        lengths.append(len(gen))
    assert lengths[0] == 1
    assert max(lengths) > 1, "the other prompts must keep generating for this test to bite"
    batched = count_activations(
        model, tok, PROMPTS[:3], positions="generated", batch_size=3, max_new_tokens=max_new
    )
    assert batched.n_positions.tolist() == [sum(lengths)] * 2
    _assert_same(batched, ref)
    single = count_activations(
        model, tok, PROMPTS[:3], positions="generated", batch_size=1, max_new_tokens=max_new
    )
    assert torch.equal(batched.counts, single.counts)
    assert torch.equal(batched.n_positions, single.n_positions)


def test_generated_with_pad_equal_to_eos(tiny_model, tiny_tokenizer):
    """A tokenizer without pad token gets pad = EOS; left padding with EOS is not 'done'."""
    model = _model(tiny_model, "qwen2")
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    assert tok.pad_token_id is None
    got = count_activations(
        model, tok, PROMPTS[:3], positions="generated", batch_size=3, max_new_tokens=3
    )
    assert tok.pad_token_id == tok.eos_token_id
    alone = count_activations(
        model, tok, PROMPTS[:3], positions="generated", batch_size=1, max_new_tokens=3
    )
    assert torch.equal(got.counts, alone.counts)
    assert torch.equal(got.n_positions, alone.n_positions)


def test_sampling_is_seeded(tiny_model, tiny_tokenizer):
    model = _model(tiny_model, "qwen2")
    kw = dict(positions="generated", batch_size=2, max_new_tokens=4, temperature=1.5)
    a = count_activations(model, tiny_tokenizer, PROMPTS, seed=3, **kw)
    b = count_activations(model, tiny_tokenizer, PROMPTS, seed=3, **kw)
    assert torch.equal(a.counts, b.counts)
    assert a.info["temperature"] == 1.5


# ------------------------------------------------------------------------ shares and tables


def test_inhibition_and_zero_share_are_means_over_positions(tiny_model, tiny_tokenizer):
    model = _model(tiny_model, "gpt2")
    got = count_activations(model, tiny_tokenizer, PROMPTS, positions="all", batch_size=2)
    all_acts = {0: [], 1: []}
    for p in PROMPTS:
        ids = tiny_tokenizer([p], return_tensors="pt")["input_ids"]
        with direct_capture(model) as acts, torch.no_grad():
            model(input_ids=ids)
        for layer, (a,) in acts.items():
            all_acts[layer].append(a[0])
    table = got.inhibition_table()
    assert table.column_names == ["layer", "inhibited_share", "zero_share", "n_positions"]
    for layer in (0, 1):
        a = torch.cat(all_acts[layer])  # [positions, neurons]
        inhibited = (a <= 0).double().mean(-1).mean().item()
        zero = (a == 0).double().mean(-1).mean().item()
        assert table["inhibited_share"][layer].as_py() == pytest.approx(inhibited, rel=1e-12)
        assert table["zero_share"][layer].as_py() == pytest.approx(zero, rel=1e-12, abs=1e-15)
        assert table["n_positions"][layer].as_py() == a.shape[0]
    # GELU: most neurons are negative, never exactly zero in float64 on this input
    assert 0 < table["inhibited_share"][0].as_py() < 1


def test_add_by_hand():
    sites = [type("S", (), {"size": 3})(), type("S", (), {"size": 3})()]
    c = ActivationCounts.empty(sites)
    c.add(0, torch.tensor([[1.0, 0.0, -2.0], [0.5, 0.5, 0.0]]))
    c.add(0, torch.empty(0, 3))  # nothing recorded: no change
    c.add(1, torch.tensor([[-1.0, -1.0, -1.0]]))
    assert c.counts.tolist() == [[2, 1, 0], [0, 0, 0]]
    assert c.n_positions.tolist() == [2, 1]
    assert c.column_positions.tolist() == [[2, 2, 2], [1, 1, 1]]
    t = c.inhibition_table().to_pydict()
    assert t["inhibited_share"] == pytest.approx([(2 / 3 + 1 / 3) / 2, 1.0])
    assert t["zero_share"] == pytest.approx([(1 / 3 + 1 / 3) / 2, 0.0])


def test_count_table_layout():
    sites = [type("S", (), {"size": 4})()] * 3
    c = ActivationCounts.empty(sites)
    c.counts = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    c.column_positions = torch.tensor([7, 8, 9])[:, None].expand(3, 4)
    t = c.count_table()
    assert t.column_names == ["layer", "module", "index", "count", "n_positions"]
    assert set(t["module"].to_pylist()) == {"mlp"}
    assert t.num_rows == 12
    d = t.to_pydict()
    assert d["layer"] == [0] * 4 + [1] * 4 + [2] * 4
    assert d["index"] == [0, 1, 2, 3] * 3
    assert d["count"] == list(range(12))
    assert d["n_positions"] == [7] * 4 + [8] * 4 + [9] * 4
    # round trip through the matrix the figures use
    m = np.zeros((3, 4), dtype=np.int64)
    m[d["layer"], d["index"]] = d["count"]
    assert (m == c.counts.numpy()).all()


def test_count_table_from_model(tiny_model, tiny_tokenizer):
    model = tiny_model("bloom")
    got = count_activations(model, tiny_tokenizer, PROMPTS[:2], positions="all")
    t = got.count_table()
    assert t.num_rows == 2 * 128
    assert set(t["n_positions"].to_pylist()) == {int(got.n_positions[0])}


def test_bad_arguments(tiny_model, tiny_tokenizer):
    model = tiny_model("qwen2")
    with pytest.raises(ValueError, match="positions"):
        count_activations(model, tiny_tokenizer, PROMPTS, positions="last")
    with pytest.raises(ValueError, match="no prompts"):
        count_activations(model, tiny_tokenizer, [], positions="all")


# ------------------------------------------------------------------------------ peak neurons


def test_peak_neurons_by_hand():
    counts = np.array([[5, 1, 3], [2, 5, 0]])
    mask = peak_neurons(counts, 0.5)  # ceil(0.5 * 6) = 3
    assert mask.tolist() == [[True, False, True], [False, True, False]]
    assert peak_neurons(counts, 1.0).all()
    only = peak_neurons(counts, 0.01)  # ceil -> at least one: the first of the tied 5s
    assert only.tolist() == [[True, False, False], [False, False, False]]
    ties = peak_neurons(np.ones((2, 2), dtype=np.int64), 0.5)
    assert ties.tolist() == [[True, True], [False, False]], "ties broken by position"
    assert mask.dtype == bool and mask.shape == counts.shape


def test_peak_neurons_keeps_ceil_share():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 1000, size=(4, 25))
    mask = peak_neurons(counts, 0.2)
    assert mask.sum() == 20
    assert counts[mask].min() >= counts[~mask].max()


def test_peak_neurons_exact_share_when_integral():
    assert peak_neurons(np.arange(30).reshape(3, 10), 0.1).sum() == 3
    assert peak_neurons(np.arange(10).reshape(2, 5), 0.7).sum() == 7
    assert peak_neurons(np.arange(36864).reshape(18, 2048), 0.2).sum() == 7373  # ceil(7372.8)


# ------------------------------------------------------------- learned position embeddings


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_gpt2_prompts_longer_than_the_position_table(tiny_tokenizer, positions):
    """Prompts (+ new tokens) are cut to fit a learned position table instead of crashing."""
    config = build_config("gpt2", tiny_tokenizer, {**TINY_SPEC, "seq_len": 32})
    config.max_position_embeddings = 32  # a real GPT-2-like model with a short table
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    long_prompt = " ".join(_S["en"][:6])
    assert len(tiny_tokenizer(long_prompt)["input_ids"]) > 32
    got = count_activations(
        model, tiny_tokenizer, [long_prompt], positions=positions, max_new_tokens=4
    )
    assert got.n_positions[0] > 0
    if positions == "all":
        assert got.n_positions[0] == 32  # cut to the table


def test_tiny_models_have_room_beyond_their_training_length(tiny_tokenizer):
    config = build_config("gpt2", tiny_tokenizer, {**TINY_SPEC, "seq_len": 32})
    assert config.max_position_embeddings >= 2048

"""PLND importance against slow, direct one-neuron-at-a-time ablation on tiny models.

Every neuron's weights are zeroed in turn (row of up/v/q/k incl. bias, column of
down/o), the stock sub-layer is rerun on its captured input and the norm of the change
per token is compared with the parallel importance, in float64 with rtol 1e-6.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import types

import pytest
import torch
from conftest import forward_with_hooks, make_model

# GPT-NeoX's RoPE also handles partial rotary (it equals Llama's for full rotary)
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

from workflow_scripts.models.anatomy import (
    AttentionSite,
    attention_sites,
    decoder_layers,
    mlp_sites,
)
from workflow_scripts.neurons import plnd
from workflow_scripts.neurons.plnd import (
    PARTS,
    attention_state,
    important,
    important_counts,
    language_agnostic,
    language_specific,
    plnd_scores,
    qk_importance,
    specific_minus_agnostic,
    v_importance,
)

TEXTS = [
    "the cat sees the river today near the green house.",
    "le chat voit la ville.",
    "猫喜欢水",
]
# test case -> (conftest model id, num_kv_heads)
CASES = {
    "qwen2": ("qwen2", 4),
    "qwen2_gqa": ("qwen2", 2),
    "llama": ("llama", 4),
    "llama_gqa": ("llama", 2),
    "gemma3": ("gemma3_text", 4),
    "gemma3_gqa": ("gemma3_text", 2),
    "phi3": ("phi3", 4),  # fused gate_up MLP, fused concatenated [q; k; v]
    "phi3_gqa": ("phi3", 2),
    "starcoder2": ("starcoder2", 2),  # biases everywhere, sliding window 4
    "gpt_neox": ("gpt_neox", 4),  # per-head interleaved qkv, partial rotary, parallel blocks
    "olmo2": ("olmo2", 2),  # q/k RMSNorm over the whole projection, post-norms
}
GQA_CASES = [c for c, (_, kv) in CASES.items() if kv < 4]
RTOL, ATOL = 1e-6, 1e-12
ATTN_KW = ("hidden_states", "position_embeddings", "attention_mask")


def _float64_rmsnorm(norm: torch.nn.Module) -> None:
    """Gemma 3's and OLMo 2's RMSNorms compute in float32; make them compute in the input
    dtype (float64), the same function otherwise."""

    def gemma(self, x):
        return self._norm(x) * (1.0 + self.weight)

    def olmo(self, x):
        return self.weight * (
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        )

    forward = gemma if type(norm).__name__ == "Gemma3RMSNorm" else olmo
    norm.forward = types.MethodType(forward, norm)


def build(tokenizer, case: str) -> torch.nn.Module:
    """Tiny float64 model of ``case`` with O(1) random weights (non-uniform attention)."""
    model_id, kv = CASES.get(case, (case, None))
    extra = {"num_kv_heads": kv} if kv is not None else {}
    model = make_model(tokenizer, model_id, **extra).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed" in name or "wte" in name or "wpe" in name:
                continue
            if p.dim() == 2:
                fan_in = p.shape[0] if "c_" in name else p.shape[1]  # GPT-2 Conv1D: [in, out]
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / fan_in**0.5)
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    for module in model.modules():
        if type(module).__name__ in ("Gemma3RMSNorm", "Olmo2RMSNorm"):
            _float64_rmsnorm(module)
    return model


@dataclasses.dataclass
class Run:
    model: torch.nn.Module
    enc: dict
    valid: torch.Tensor  # [B, T]
    mlp_in: dict[int, tuple]  # positional args of the MLP (Bloom also takes the residual)
    attn_kw: dict[int, dict]
    scores: dict


def capture(model, enc, parts=PARTS) -> Run:
    """Inputs of every MLP and attention module, plus the parallel scores (tokens kept)."""
    mlp_in: dict[int, tuple] = {}
    attn_kw: dict[int, dict] = {}
    handles = []
    for i, block in enumerate(decoder_layers(model)):
        handles.append(
            block.mlp.register_forward_pre_hook(lambda _m, args, i=i: mlp_in.__setitem__(i, args))
        )
        attn = getattr(block, "self_attn", None) or getattr(block, "attention", None)
        if attn is not None:

            def keep(_m, args, kw, _o, i=i):
                named = dict(zip(ATTN_KW, args, strict=False))  # GPT-NeoX: hidden positional
                attn_kw[i] = {**named, **{k: kw[k] for k in ATTN_KW if k in kw}}

            handles.append(attn.register_forward_hook(keep, with_kwargs=True))
    forward_with_hooks(model, enc, handles)
    scores = plnd_scores(
        model, enc["input_ids"], enc["attention_mask"], parts=parts, keep_tokens=True
    )
    return Run(model, enc, enc["attention_mask"].bool(), mlp_in, attn_kw, scores)


@pytest.fixture(scope="module", params=list(CASES))
def run(request, tiny_tokenizer) -> Run:
    model = build(tiny_tokenizer, request.param)
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert not enc["attention_mask"].all(), "the batch must contain padding"
    return capture(model, enc)


@contextlib.contextmanager
def zeroed(*targets):
    """Zero ``tensor[index]`` for each ``(tensor, index)`` (``None`` tensors skipped)."""
    saved = [(t, idx, t[idx].clone()) for t, idx in targets if t is not None]
    with torch.no_grad():
        for t, idx, _ in saved:
            t[idx] = 0
        try:
            yield
        finally:
            for t, idx, value in saved:
                t[idx] = value


def assert_matches(run: Run, layer: int, part: str, direct: torch.Tensor, rtol=RTOL):
    got = run.scores[(layer, part)].tokens
    assert got.shape == direct.shape
    got, direct = got[run.valid], direct[run.valid]
    assert direct.abs().max() > 1e-6, "degenerate test: no change at all"
    assert torch.allclose(got, direct, rtol=rtol, atol=ATOL), (
        layer,
        part,
        ((got - direct).abs() / direct.abs().clamp_min(1e-300)).max().item(),
    )


# ------------------------------------------------------------------ direct definitions


def direct_ffn(site, args: tuple) -> torch.Tensor:
    """``[B, T, I]``: MLP output change per token when neuron k is zeroed, one k at a time."""
    mlp, x = site.mlp, args[0]
    out = x.new_zeros(*x.shape[:2], site.size)
    with torch.no_grad():
        base = mlp(*args)
        fused = getattr(mlp, "gate_up_proj", None)  # Phi-3: rows [gate; up]
        for k in range(site.size):
            if fused is not None:
                targets = [(fused.weight, k), (fused.weight, site.size + k)]
            elif site.gated:  # row k of up_proj (and of gate_proj: act(0) = 0)
                targets = [(mlp.up_proj.weight, k), (mlp.gate_proj.weight, k)]
                targets += [(mlp.up_proj.bias, k), (mlp.gate_proj.bias, k)]
            else:  # column k of the down projection
                targets = [(site.down_weight(), (slice(None), k))]
            with zeroed(*targets):
                out[..., k] = (mlp(*args) - base).norm(dim=-1)
    return out


def attn_out(attn, kw) -> torch.Tensor:
    return attn(**kw)[0]


def proj_rows(site: AttentionSite, part: str, c: int) -> list[tuple]:
    """The weight and bias rows of output channel ``c`` of q/k/v, by parameter name:
    ``{part}_proj``, or row ``offset + c`` of a fused ``qkv_proj`` ``[q; k; v]`` (Phi-3)."""
    attn, dim = site.attn, site.head_dim
    if hasattr(attn, "qkv_proj"):
        n_q, n_kv = site.n_heads * dim, site.n_kv_heads * dim
        proj, c = attn.qkv_proj, c + {"q": 0, "k": n_q, "v": n_q + n_kv}[part]
    elif hasattr(attn, "query_key_value"):  # per head h: rows [q_h; k_h; v_h]
        proj, c = attn.query_key_value, (c // dim) * 3 * dim + "qkv".index(part) * dim + c % dim
    else:
        proj = getattr(attn, f"{part}_proj")
    return [(proj.weight, c), (proj.bias, c)]


def stock_qkv(site: AttentionSite, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    attn = site.attn
    if hasattr(attn, "qkv_proj"):
        n_q, n_kv = site.n_heads * site.head_dim, site.n_kv_heads * site.head_dim
        return attn.qkv_proj(x).split([n_q, n_kv, n_kv], dim=-1)
    if hasattr(attn, "query_key_value"):
        per_head = attn.query_key_value(x).view(*x.shape[:2], site.n_heads, -1)
        return tuple(t.flatten(-2) for t in per_head.chunk(3, dim=-1))
    return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)


def direct_v_o(site: AttentionSite, kw) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, T, n_kv*D], [B, T, H*D])``: attention output change per zeroed V / O neuron."""
    x = kw["hidden_states"]
    v_imp = x.new_zeros(*x.shape[:2], site.size("v"))
    o_imp = x.new_zeros(*x.shape[:2], site.size("o"))
    with torch.no_grad():
        base = attn_out(site.attn, kw)
        for c in range(site.size("v")):
            with zeroed(*proj_rows(site, "v", c)):
                v_imp[..., c] = (attn_out(site.attn, kw) - base).norm(dim=-1)
        for c in range(site.size("o")):
            with zeroed((site.o.weight, (slice(None), c))):
                o_imp[..., c] = (attn_out(site.attn, kw) - base).norm(dim=-1)
    return v_imp, o_imp


def direct_probs(site: AttentionSite, kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention probabilities ``[B, H, T, T]`` and values, straight from the weights."""
    attn, x = site.attn, kw["hidden_states"]
    bsz, seq, _ = x.shape

    def heads(t):
        return t.view(bsz, seq, -1, site.head_dim).transpose(1, 2)

    q, k, v = stock_qkv(site, x)
    norm = getattr(attn, "q_norm", None)
    if norm is not None and norm.weight.shape[-1] != site.head_dim:  # OLMo 2: whole projection
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = heads(q), heads(k), heads(v)
    if norm is not None and norm.weight.shape[-1] == site.head_dim:  # Gemma 3: per head
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q, k, *kw["position_embeddings"])
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) * attn.scaling
    mask = kw["attention_mask"]
    assert mask is not None and mask.dtype == torch.bool
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return probs, v


def direct_q_k(site: AttentionSite, kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query position, the norm of the change of the attention rows per zeroed Q / K dim,
    over all heads (no mapping assumed; with per-head q norms only the dim's own head
    changes, with OLMo 2's whole-projection norms every head does)."""
    x = kw["hidden_states"]
    q_imp = x.new_zeros(*x.shape[:2], site.size("q"))
    k_imp = x.new_zeros(*x.shape[:2], site.size("k"))
    with torch.no_grad():
        base, _ = direct_probs(site, kw)
        for c in range(site.size("q")):
            with zeroed(*proj_rows(site, "q", c)):
                new, _ = direct_probs(site, kw)
            q_imp[..., c] = (new - base).pow(2).sum(dim=(1, 3)).sqrt()
        for c in range(site.size("k")):
            with zeroed(*proj_rows(site, "k", c)):
                new, _ = direct_probs(site, kw)
            k_imp[..., c] = (new - base).pow(2).sum(dim=(1, 3)).sqrt()
    return q_imp, k_imp


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", [*CASES, "mistral"])
def test_attention_sites(tiny_tokenizer, case):
    model = build(tiny_tokenizer, case)
    sites = attention_sites(model)
    assert [s.layer for s in sites] == [0, 1]
    kv = CASES.get(case, (case, 4))[1]
    for s in sites:
        assert (s.n_heads, s.n_kv_heads, s.head_dim) == (4, kv, 8)
        assert s.scaling == s.attn.scaling
        assert s.kv_of_head == ((0, 0, 1, 1) if kv == 2 else (0, 1, 2, 3))
        assert s.heads_of_kv().tolist() == ([[0, 1], [2, 3]] if kv == 2 else [[0], [1], [2], [3]])
        assert (s.size("q"), s.size("k"), s.size("v"), s.size("o")) == (32, 8 * kv, 8 * kv, 32)
        assert (s.q_norm is not None) == case.startswith(("gemma3", "olmo2"))
    if case.startswith("gemma3"):
        assert sites[0].scaling == pytest.approx(model.config.query_pre_attn_scalar**-0.5)
        assert sites[0].scaling != 8**-0.5
    else:
        assert sites[0].scaling == pytest.approx(8**-0.5)


@pytest.mark.parametrize("case", ["gpt2"])
def test_fused_attention_raises_but_ffn_works(tiny_tokenizer, case):
    model = build(tiny_tokenizer, case)
    with pytest.raises(NotImplementedError, match=r"parts=\('ffn',\)"):
        attention_sites(model)
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    with pytest.raises(NotImplementedError):
        plnd_scores(model, enc["input_ids"], enc["attention_mask"], parts=("ffn", "v"))
    r = capture(model, enc, parts=("ffn",))
    assert sorted(r.scores) == [(0, "ffn"), (1, "ffn")]
    for site in mlp_sites(model):
        assert_matches(r, site.layer, "ffn", direct_ffn(site, r.mlp_in[site.layer]))


def test_ffn_matches_direct(run):
    for site in mlp_sites(run.model):
        assert run.scores[(site.layer, "ffn")].l2.shape == (len(TEXTS), site.size)
        assert_matches(run, site.layer, "ffn", direct_ffn(site, run.mlp_in[site.layer]))


def test_v_o_match_direct(run):
    for site in attention_sites(run.model):
        v_imp, o_imp = direct_v_o(site, run.attn_kw[site.layer])
        assert_matches(run, site.layer, "v", v_imp)
        assert_matches(run, site.layer, "o", o_imp)


def test_direct_probs_reproduce_the_stock_module(run):
    """The slow definition used below is the model's own attention."""
    for site in attention_sites(run.model):
        kw = run.attn_kw[site.layer]
        with torch.no_grad():
            probs, v = direct_probs(site, kw)
            o_in = (probs @ v).transpose(1, 2).reshape(*probs.shape[:1], probs.shape[2], -1)
            mine, stock = site.o(o_in), attn_out(site.attn, kw)
        assert torch.allclose(mine[run.valid], stock[run.valid], rtol=1e-10, atol=1e-12)
        ent = -(probs * probs.clamp_min(1e-300).log()).sum(-1)  # [B, H, T]
        ent = ent.transpose(1, 2)[run.valid][3:]  # real query positions (a sliding window
        assert ent.min() < 0.9 * ent.max(), "attention should not be uniform"  # masks pads fully)


def test_q_k_match_direct(run):
    for site in attention_sites(run.model):
        q_imp, k_imp = direct_q_k(site, run.attn_kw[site.layer])
        assert_matches(run, site.layer, "q", q_imp)
        assert_matches(run, site.layer, "k", k_imp)
        # the first token attends only to itself: no Q/K neuron can change its row
        assert run.scores[(site.layer, "q")].tokens[:, 0].abs().max() < 1e-12


def test_q_k_reuse_the_forward_projections(run, monkeypatch):
    """q/k/v come from the projections' outputs in the forward pass, not a second call."""

    def again(*_args, **_kwargs):
        raise AssertionError("q/k/v projected a second time")

    monkeypatch.setattr(AttentionSite, "project", again)
    enc = run.enc
    scores = plnd_scores(
        run.model, enc["input_ids"], enc["attention_mask"], parts=("q", "k"), keep_tokens=True
    )
    for key, got in scores.items():
        torch.testing.assert_close(got.tokens, run.scores[key].tokens, rtol=0, atol=0)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled"])
def test_tiles_equal_the_full_score_matrix(run, fused):
    """Tiny query blocks and dim chunks (every tile boundary, causal key ranges, the
    sliding window of starcoder2, padding, documents sharing a tile), in eager ops and
    through the compiled kernel, give the full-matrix computation's values;
    OLMo 2's whole-projection norms go to the full-matrix path."""
    if fused and shutil.which("g++") is None and not os.environ.get("CI"):
        pytest.skip("no C++ compiler (g++): torch.compile's CPU kernel cannot be built here")
    for site in attention_sites(run.model):
        kw = run.attn_kw[site.layer]
        st = attention_state(
            site, kw["hidden_states"], kw["position_embeddings"], kw["attention_mask"]
        )
        with torch.no_grad():
            direct = plnd.qk_importance_direct(site, st)
            if site.qk_norm_over_projection():
                routed = qk_importance(site, st, valid=run.valid)
                assert all(torch.equal(routed[p], direct[p]) for p in direct)
                continue
            # eager, or the torch.compile-fused kernel (one compile for all models)
            for block, elements in (
                ((1, 1), (2, 64), (5, 10**6)) if not fused else ((3, 200), (7, 10**6))
            ):
                tiled = plnd.qk_importance_tiled(
                    site, st, ("q", "k"), elements, run.valid, block, compiled=fused
                )
                for part in ("q", "k"):
                    got, want = tiled[part][run.valid], direct[part][run.valid]
                    assert torch.allclose(got, want, rtol=RTOL, atol=ATOL), (part, block, fused)
                    assert (tiled[part][~run.valid] == 0).all()
                if fused:  # not the eager fallback after a failed compile
                    assert plnd._compiled.get("fn") is not None, "torch.compile failed"


@pytest.mark.parametrize("case", GQA_CASES)
def test_gqa_mapping_matters(tiny_tokenizer, case):
    """With n_kv < n_heads the released indexing ``h % n_kv`` gives different numbers."""
    model = build(tiny_tokenizer, case)
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    r = capture(model, enc, parts=("v", "k"))
    valid = r.valid
    o_in: dict[int, torch.Tensor] = {}
    handles = [
        s.o.register_forward_pre_hook(lambda _m, a, i=s.layer: o_in.__setitem__(i, a[0]))
        for s in attention_sites(model)
    ]
    with torch.no_grad():
        model(**enc)
    for h in handles:
        h.remove()
    for site in attention_sites(model):
        wrong = dataclasses.replace(site, kv_of_head=tuple(h % 2 for h in range(4)))
        assert wrong.kv_of_head != site.kv_of_head
        kw = run_kw = r.attn_kw[site.layer]
        v_direct, _ = direct_v_o(site, run_kw)
        _, k_direct = direct_q_k(site, kw)
        with torch.no_grad():
            v_right = v_importance(site, o_in[site.layer])
            v_wrong = v_importance(wrong, o_in[site.layer])
            st = attention_state(
                wrong, kw["hidden_states"], kw["position_embeddings"], kw["attention_mask"]
            )
            k_wrong = qk_importance(wrong, st, ("k",))["k"]
        assert torch.allclose(v_right[valid], v_direct[valid], rtol=RTOL, atol=ATOL)
        assert not torch.allclose(v_wrong[valid], v_direct[valid], rtol=1e-3)
        assert not torch.allclose(k_wrong[valid], k_direct[valid], rtol=1e-3)
        # the built-in check of the recomputed attention catches a wrong mapping
        with pytest.raises(RuntimeError, match="recomputed attention differs"):
            err = plnd._o_in_error(wrong, st, o_in[site.layer], valid)
            plnd._check_o_in({site.layer: err}, o_in[site.layer].dtype)


@pytest.mark.parametrize("case", ["qwen2_gqa", "gemma3_gqa", "llama"])
def test_padded_batch_equals_single_documents(tiny_tokenizer, case):
    model = build(tiny_tokenizer, case)
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert tiny_tokenizer.padding_side == "right"
    batch = plnd_scores(model, enc["input_ids"], enc["attention_mask"])
    for b, text in enumerate(TEXTS):
        one = tiny_tokenizer([text], return_tensors="pt")
        single = plnd_scores(model, one["input_ids"], one["attention_mask"])
        assert batch.keys() == single.keys()
        for key, s in single.items():
            assert batch[key].n_tokens[b] == s.n_tokens[0] == one["input_ids"].shape[1]
            for red in ("l2", "mean", "max", "sum", "rms"):
                got, want = batch[key].get(red)[b], s.get(red)[0]
                assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (key, red, b)


def test_eager_and_sdpa_agree(tiny_tokenizer):
    model = build(tiny_tokenizer, "qwen2_gqa")
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    sdpa = plnd_scores(model, enc["input_ids"], enc["attention_mask"])
    model.set_attn_implementation("eager")  # additive float mask, float32 softmax
    eager = plnd_scores(model, enc["input_ids"], enc["attention_mask"])
    for key, s in sdpa.items():
        assert torch.allclose(eager[key].l2, s.l2, rtol=1e-5), key
    # no padding: sdpa receives no mask at all (is_causal), handled as causal
    one = tiny_tokenizer([TEXTS[0]], return_tensors="pt")
    model.set_attn_implementation("sdpa")
    a = plnd_scores(model, one["input_ids"], parts=("q", "k"))
    model.set_attn_implementation("eager")
    b = plnd_scores(model, one["input_ids"], parts=("q", "k"))
    for key in a:  # layer 0 sees identical inputs; later layers the float32 eager softmax
        assert torch.allclose(a[key].l2, b[key].l2, rtol=1e-9 if key[0] == 0 else 1e-5), key


def test_reductions_and_chunking(tiny_tokenizer):
    model = build(tiny_tokenizer, "llama_gqa")
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    full = plnd_scores(model, enc["input_ids"], enc["attention_mask"], keep_tokens=True)
    tiny_chunks = plnd_scores(model, enc["input_ids"], enc["attention_mask"], max_elements=1)
    valid = enc["attention_mask"].bool()
    n = valid.sum(1)
    for key, s in full.items():
        tok = s.tokens
        assert (tok[~valid] == 0).all()
        assert torch.allclose(s.l2, tok.pow(2).sum(1).sqrt())
        assert torch.allclose(s.mean, tok.sum(1) / n[:, None])
        assert torch.allclose(s.sum, tok.sum(1))
        assert torch.allclose(s.max, tok.amax(1))
        assert torch.allclose(s.rms, s.l2 / n[:, None].sqrt())
        assert tiny_chunks[key].tokens is None  # FFN and O: norms of the unscaled input
        for reduction in ("l2", "mean", "max"):
            got, want = tiny_chunks[key].get(reduction), s.get(reduction)
            assert torch.allclose(got, want, rtol=1e-12), (key, reduction)
    one = tiny_tokenizer(TEXTS[:1], return_tensors="pt")  # no pad: nothing masked
    kept = plnd_scores(model, one["input_ids"], one["attention_mask"], keep_tokens=True)
    for key, s in plnd_scores(model, one["input_ids"], one["attention_mask"]).items():
        tok = kept[key].tokens
        for reduction, want in (("l2", tok.norm(dim=1)), ("max", tok.amax(1))):
            assert torch.allclose(s.get(reduction), want, rtol=1e-12), (key, reduction)
    with pytest.raises(ValueError, match="unknown reduction"):
        s.get("median")
    only = plnd_scores(model, enc["input_ids"], enc["attention_mask"], parts=("q",), layers=[1])
    assert list(only) == [(1, "q")]
    assert torch.equal(only[(1, "q")].l2, full[(1, "q")].l2)


def test_released_variant(tiny_tokenizer):
    model = build(tiny_tokenizer, "qwen2_gqa")
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    valid = enc["attention_mask"].bool()
    r = capture(model, enc, parts=())
    scores = plnd_scores(model, enc["input_ids"], enc["attention_mask"], variant="released")
    assert set(scores) == {(i, p) for i in (0, 1) for p in PARTS}
    paper = plnd_scores(model, enc["input_ids"], enc["attention_mask"], parts=("v", "o"))
    for site in mlp_sites(model):
        with torch.no_grad():
            up = site.mlp.up_proj(r.mlp_in[site.layer][0]).abs()
        want = torch.where(valid[..., None], up, 0).sum(1)
        assert torch.allclose(scores[(site.layer, "ffn")].sum, want, rtol=1e-10)
    for site in attention_sites(model):
        kw = r.attn_kw[site.layer]
        with torch.no_grad():
            probs, v = direct_probs(site, kw)
        o_in = (probs @ v).transpose(1, 2).reshape(len(TEXTS), probs.shape[2], -1)
        q_want = torch.where(valid[..., None], o_in.abs(), 0).sum(1)  # [B, H*D]
        k_want = q_want.view(len(TEXTS), 2, 2, 8).sum(2).reshape(len(TEXTS), -1)
        assert torch.allclose(scores[(site.layer, "q")].sum, q_want, rtol=1e-9)
        assert torch.allclose(scores[(site.layer, "k")].sum, k_want, rtol=1e-9)
        for part in ("v", "o"):
            assert torch.equal(scores[(site.layer, part)].l2, paper[(site.layer, part)].l2)
    phi3 = build(tiny_tokenizer, "phi3")  # fused gate_up: W_up x is its second half
    fused = plnd_scores(
        phi3, enc["input_ids"], enc["attention_mask"], parts=("ffn",), variant="released"
    )
    mlp_in = capture(phi3, enc, parts=("ffn",)).mlp_in
    for site in mlp_sites(phi3):
        w_up = site.mlp.gate_up_proj.weight[site.size :]
        with torch.no_grad():
            up = (mlp_in[site.layer][0] @ w_up.T).abs()
        want = torch.where(valid[..., None], up, 0).sum(1)
        assert torch.allclose(fused[(site.layer, "ffn")].sum, want, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown plnd variant"):
        plnd_scores(model, enc["input_ids"], variant="authors")
    with pytest.raises(ValueError, match="unknown parts"):
        plnd_scores(model, enc["input_ids"], parts=("mlp",))


def _all_hooks(model):
    return [
        (name, kind)
        for name, m in model.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks")
        if getattr(m, kind, None)
    ]


def test_hooks_removed_and_model_unchanged(tiny_tokenizer, monkeypatch):
    model = build(tiny_tokenizer, "gemma3")
    enc = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**enc).logits
    plnd_scores(model, enc["input_ids"], enc["attention_mask"])
    assert _all_hooks(model) == []

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(plnd, "qk_importance", boom)
    with pytest.raises(RuntimeError, match="boom"):
        plnd_scores(model, enc["input_ids"], enc["attention_mask"])
    assert _all_hooks(model) == []
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, before)


def test_selection_helpers():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9], [0.8, 0.2, 0.4, 0.1]])
    assert important(scores, top_n=2).tolist() == [
        [False, True, False, True],
        [True, False, True, False],
    ]
    assert important(scores, epsilon=0.3).tolist() == [
        [False, True, True, True],
        [True, False, True, False],
    ]
    assert important(scores, top_n=10).all()
    with pytest.raises(ValueError, match="exactly one"):
        important(scores)
    with pytest.raises(ValueError, match="exactly one"):
        important(scores, epsilon=0.1, top_n=1)
    freq = important(scores, top_n=2).sum(0)  # [1, 1, 1, 1]
    assert language_specific(freq, 2).tolist() == [False] * 4
    assert language_specific(torch.tensor([10, 9, 8]), 10, 0.9).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        language_specific(freq, 0)
    # mappings keyed by (layer, part) work the same way
    key = (0, "ffn")
    sets = {
        "fr": {key: torch.tensor([True, True, False, True])},
        "zh": {key: torch.tensor([True, False, True, True])},
        "en": {key: torch.tensor([True, True, True, False])},
    }
    agnostic = language_agnostic(sets)
    assert agnostic[key].tolist() == [True, False, False, False]
    fr = specific_minus_agnostic(sets["fr"], agnostic)
    assert fr[key].tolist() == [False, True, False, True]
    batch = {
        key: plnd.NeuronScores(
            l2=scores, mean=scores, max=scores, n_tokens=torch.tensor([3.0, 4.0])
        )
    }
    counts = important_counts(batch, "l2", top_n=1)
    assert counts[key].tolist() == [1, 0, 0, 1]
    assert important_counts(batch, "sum", epsilon=0.85)[key].tolist() == [1, 1, 2, 1]


def test_qk_norm_scope(tiny_tokenizer):
    """Gemma 3 normalises q/k per head, OLMo 2 over the whole projection (both in CASES)."""
    assert not attention_sites(build(tiny_tokenizer, "gemma3"))[0].qk_norm_over_projection()
    assert attention_sites(build(tiny_tokenizer, "olmo2"))[0].qk_norm_over_projection()


def test_bloom_v_o_by_whole_model_forward_and_q_k_refused(tiny_tokenizer):
    """Bloom: per-head interleaved query_key_value, ALiBi (no RoPE). V and O importance
    equal the change of the attention module's output when one weight row/column is zeroed
    and the whole model re-run; Q/K refuse clearly (they are defined here for RoPE)."""
    model = build(tiny_tokenizer, "bloom")
    enc = tiny_tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    valid = enc["attention_mask"].bool()
    scores = plnd_scores(
        model, enc["input_ids"], enc["attention_mask"], parts=("v", "o"), keep_tokens=True
    )
    site = attention_sites(model)[1]
    out: list[torch.Tensor] = []
    handle = site.attn.register_forward_hook(lambda _m, _a, o: out.append(o[0]))
    try:
        with torch.no_grad():
            model(**enc)
            base = out.pop()
            for part, rows in (("v", lambda c: proj_rows(site, "v", c)), ("o", None)):
                got = scores[(1, part)].tokens
                for c in range(0, site.size(part), 5):
                    targets = rows(c) if rows else [(site.o.weight, (slice(None), c))]
                    with zeroed(*targets):
                        model(**enc)
                    direct = (out.pop() - base).norm(dim=-1)
                    assert torch.allclose(got[..., c][valid], direct[valid], rtol=1e-6, atol=1e-12)
    finally:
        handle.remove()
    with pytest.raises(NotImplementedError, match="no position_embeddings"):
        plnd_scores(model, enc["input_ids"], enc["attention_mask"], parts=("q",))

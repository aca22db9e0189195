"""Parallel Language-specific Neuron Detection (PLND), Zhao et al. 2024 (docs/methods.md, "PLND").

The importance of a neuron N for a token is the L2 norm of the change of its
sub-layer's output (MLP output for FFN neurons, self-attention output for
attention neurons) when N is deactivated, i.e. its row of ``gate/up/q/k/v``
(weight and bias) or its column of ``down/o`` is zeroed. All neurons of a batch
are scored from ONE forward pass with hooks on the stock modules:

- ``ffn`` neuron k (intermediate unit): ``|h_ffn[k]| * ||W_down[:, k]||``, with
  ``h_ffn`` the input of the down projection (gated and plain MLPs).
- ``ffn`` neuron k of routed expert j (mixture-of-experts layers): on the tokens
  routed to j, ``|w_j h_j[k]| * ||W_down_j[:, k]||`` with ``w_j`` the routing weight,
  0 on the others (part ``ffn.e<j>``); the shared expert's (``ffn.shared``) as a dense
  FFN's, times its sigmoid gate where the block has one (Qwen2-MoE).
- ``o`` neuron c (input channel of ``o_proj``): ``|o_in[c]| * ||W_o[:, c]||``.
- ``v`` neuron (kv head g, dim j; output channel ``g*head_dim + j`` of ``v_proj``):
  ``|| sum_{h served by g} o_in[h*head_dim + j] * W_o[:, h*head_dim + j] ||``, since
  ``o_in[h*D + j] = sum_t' A[h, t, t'] v[t', g*D + j]`` (exact, from the o_proj input).
- ``q`` neuron (query head h, dim d; output channel ``h*D + d`` of ``q_proj``): the norm
  over key positions of the change of head h's attention row,
  ``|| softmax(S') - softmax(S) ||``, where ``S' = S - delta_d`` with
  ``delta_d = q_d k_d^T * scaling`` as in the paper. Exact for rotary models: the neuron
  is the pre-RoPE channel, so ``delta_d[t, t'] = q[t, d] * (R_t^T k_rot[t'])[d] * scaling``
  (the key rotated back into the query's frame), and for q_norm/k_norm models (Gemma 3)
  the change of the RMS normaliser is included exactly (``S'`` is rescaled by
  ``rms / rms_without_d``). Computed in parallel over d (chunked to bound memory).
- ``k`` neuron (kv head g, dim d): symmetric; it serves every query head of its group
  (query head h uses kv head ``h // (n_heads // n_kv_heads)``), so its per-token
  importance is the norm of the concatenation of the row changes of all those heads,
  ``sqrt(sum_h ||softmax(S'_h) - softmax(S_h)||^2)``.

Per-token importances are reduced on the fly per document over its non-pad tokens
(:class:`NeuronScores`): ``l2`` (root of the sum of squares), ``mean`` and ``max``.
``l2`` is the paper's ``Imp(N | c)``: the norm of the change of the whole document's
layer output (the paper's ``x`` is the ``l x d_model`` matrix), unsquared as in
the method's definition (squaring is monotone: top-N sets are the same). It is the default for
selection in the ``paper`` variant; the ``released`` variant selects by ``sum``.

``released`` variant (the authors' code; docs/methods.md, "Released-code variant"): ``ffn`` = ``|W_up x|`` per token
(``W_in x`` for plain MLPs), summed over tokens; Q and K share one score from the
attention output magnitude, read here as ``q[h*D + d] = |o_in[h*D + d]|`` and
``k[g*D + d] = sum over g's query heads of q[h*D + d]`` (equal to q without GQA);
``v``/``o`` as in the paper. Selection by ``sum`` over tokens.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from workflow_scripts.models.anatomy import (
    AttentionSite,
    ExpertSite,
    MLPSite,
    attention_sites,
    ffn_sites,
    norm_eps,
)
from workflow_scripts.models.hooks import expert_inputs, routed_rows, routed_weight
from workflow_scripts.models.placement import OnDevices, input_device

PARTS = ("ffn", "q", "k", "v", "o")
ATTENTION_PARTS = ("q", "k", "v", "o")
VARIANTS = ("paper", "released")
REDUCTIONS = ("l2", "mean", "max", "sum", "rms")
DEFAULT_REDUCTION = {"paper": "l2", "released": "sum"}

Key = tuple[int, str]  # (layer, part)
X = TypeVar("X", torch.Tensor, Mapping)
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sites


# ------------------------------------------------------------- per-token importance


def column_norms(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``||weight[:, c]||`` per column, in ``dtype``: a sum of squares (at least float32),
    since ``linalg.vector_norm`` over a non-inner dim is ~7x slower on CPU (measured)."""
    w = weight.to(torch.promote_types(weight.dtype, torch.float32))
    return w.mul(w).sum(0).sqrt().to(dtype)


def ffn_importance(site: MLPSite, h_ffn: torch.Tensor) -> torch.Tensor:
    """``[B, T, I]``: ``|h_ffn[k]| * ||W_down[:, k]||`` (``h_ffn`` = input of the down proj)."""
    return h_ffn.abs() * column_norms(site.down_weight(), h_ffn.dtype)


def expert_importance(
    site: ExpertSite, hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, variant: str
) -> list[torch.Tensor]:
    """Per routed expert j, ``[N, I]`` importance of its neurons on the block's ``N``
    flattened tokens: ``|w_j h_k| * ||W_down_j[:, k]||`` on the tokens routed to j (``h`` =
    act * up, ``w_j`` the routing weight: the block output's change when k is zeroed), 0
    on the others; ``released``: ``|W_up_j x|_k`` on the routed tokens."""
    _, down = site.expert_weights()
    out = []
    for j, rows in enumerate(routed_rows(index, site.n_experts)):
        imp = hidden.new_zeros(hidden.shape[0], site.size)
        if rows.numel():
            act, up = site.activations(hidden[rows], j)
            if variant == "released":
                imp[rows] = up.abs()
            else:
                w = routed_weight(index, weights, rows, j).to(act.dtype)
                imp[rows] = (w * act * up).abs() * column_norms(down[j], act.dtype)
        out.append(imp)
    return out


def o_importance(site: AttentionSite, o_in: torch.Tensor) -> torch.Tensor:
    """``[B, T, n_heads*D]``: ``|o_in[c]| * ||W_o[:, c]||`` (``o_in`` = input of o_proj)."""
    return o_in.abs() * column_norms(site.o_weight(), o_in.dtype)


def v_importance(site: AttentionSite, o_in: torch.Tensor) -> torch.Tensor:
    """``[B, T, n_kv*D]``: norm of the o_proj output change when v channel (g, j) is zeroed.

    Channel j of kv head g reaches the output through ``o_in[h*D + j]`` of every query
    head h it serves: the change is ``sum_h o_in[h*D+j] W_o[:, h*D+j]``, whose squared
    norm is ``a^T G a`` with ``G`` the Gram matrix of those columns of ``W_o``.
    """
    bsz, seq, _ = o_in.shape
    heads, dim = site.n_heads, site.head_dim
    idx = site.heads_of_kv(o_in.device)  # [n_kv, G]
    w = site.o_weight().to(o_in.dtype).reshape(-1, heads, dim)[:, idx]  # [hid, n_kv, G, D]
    gram = (w[:, :, :, None] * w[:, :, None]).sum(0)  # [n_kv, G, G, D]
    a = o_in.reshape(bsz, seq, heads, dim)[:, :, idx]  # [B, T, n_kv, G, D]
    sq = a.new_zeros(bsz, seq, site.n_kv_heads, dim)
    for r in range(idx.shape[1]):  # a^T G a over the (symmetric) pairs of served heads
        sq.addcmul_(a[:, :, :, r].square(), gram[:, r, r])
        for s in range(r + 1, idx.shape[1]):
            sq.addcmul_(a[:, :, :, r] * a[:, :, :, s], gram[:, r, s], value=2)
    return sq.clamp_min(0).sqrt().reshape(bsz, seq, site.n_kv_heads * dim)


def _rotate_half(x: torch.Tensor, rotary: int | None = None) -> torch.Tensor:
    """RoPE's rotate-half over the first ``rotary`` dims (all by default); zeros beyond,
    where (partial rotary) the padded ``sin`` is 0 and ``cos`` is 1."""
    r = x.shape[-1] if rotary is None else rotary
    half = r // 2
    rotated = torch.cat((-x[..., half:r], x[..., :half]), dim=-1)
    if r == x.shape[-1]:
        return rotated
    return torch.cat((rotated, torch.zeros_like(x[..., r:])), dim=-1)


def _rms_factor(
    pre: torch.Tensor, norm: nn.Module | None, whole: bool = False
) -> torch.Tensor | None:
    """``rms(x) / rms(x without channel d)`` per channel, ``pre`` ``[B, heads, T, D]``: for
    an RMSNorm over head_dim, or (``whole``) over the whole projection (all heads)."""
    if norm is None:
        return None
    dims = (1, -1) if whole else (-1,)
    n = pre.shape[1] * pre.shape[-1] if whole else pre.shape[-1]
    ms = pre.pow(2).mean(dims, keepdim=True) + norm_eps(norm)
    return (1 - pre.pow(2) / (n * ms)).rsqrt()


def _additive_mask(
    mask: object, bsz: int, seq: int, dtype: torch.dtype, device: torch.device, causal: bool
) -> torch.Tensor:
    """The attention mask the stock module received, as an additive ``[B, 1|H, T, T]`` bias."""
    lowest = torch.finfo(dtype).min
    if mask is None:  # sdpa skipped the mask: plain causal (or full) attention
        allowed = torch.ones(seq, seq, dtype=torch.bool, device=device)
        if causal:
            allowed = allowed.tril()
        allowed = allowed.expand(bsz, 1, seq, seq)
    elif not torch.is_tensor(mask) or mask.dim() != 4:
        raise NotImplementedError(
            f"attention mask of type {type(mask).__name__} (shape "
            f"{tuple(getattr(mask, 'shape', ()))}); run the model with "
            "attn_implementation 'sdpa' or 'eager' for Q/K importance"
        )
    elif mask.dtype == torch.bool:
        allowed = mask
    else:
        return mask[..., :seq].to(dtype).clamp_min(lowest)
    allowed = allowed[..., :seq]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, lowest)


@dataclass
class AttentionState:
    """One layer's attention internals, recomputed from its inputs (heads on dim 1)."""

    q_pre: torch.Tensor  # [B, H, T, D] q_proj output
    q: torch.Tensor  # after q_norm (if any), before RoPE
    q_rot: torch.Tensor  # after RoPE
    k_pre: torch.Tensor  # [B, Hkv, T, D]
    k: torch.Tensor
    k_rot: torch.Tensor
    v: torch.Tensor  # [B, Hkv, T, D]
    cos: torch.Tensor  # [B|1, T, D]
    sin: torch.Tensor
    bias: torch.Tensor  # additive mask [B, 1|H, T, T]
    raw: torch.Tensor  # scaled scores before the mask, [B, H, T, T]
    probs: torch.Tensor  # softmax(raw + bias)
    rotary: int  # rotated dims (head_dim, or fewer: partial rotary; cos/sin padded)

    def o_in(self, site: AttentionSite) -> torch.Tensor:
        """``[B, T, H*D]``: the o_proj input implied by these probabilities."""
        out = self.probs @ self.v[:, site.kv_index(self.v.device)]
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def attention_state(
    site: AttentionSite,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    attention_mask: object,
    projected: Sequence[torch.Tensor] | None = None,
) -> AttentionState:
    """Recompute q, k (pre/post norm and RoPE), v and the attention probabilities.

    Uses the stock projections and norms, the rotary ``(cos, sin)`` and the mask that the
    decoder layer passed to the attention module (bool, additive float, or ``None``).
    ``projected``: the outputs of ``site.projections()`` on ``hidden_states`` when already
    at hand (captured during the forward pass), so they are not computed again.
    """
    if position_embeddings is None:
        raise NotImplementedError(f"layer {site.layer}: no position_embeddings (RoPE) kwarg")
    bsz, seq, _ = hidden_states.shape
    dtype = _work_dtype(hidden_states.dtype)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(bsz, seq, -1, site.head_dim).transpose(1, 2)

    if projected is None:
        q_flat, k_flat, v_flat = site.project(hidden_states)
    else:
        q_flat, k_flat, v_flat = site.split(projected)
    q_pre, k_pre, v = heads(q_flat), heads(k_flat), heads(v_flat)
    whole = site.qk_norm_over_projection()  # OLMo 2: the norm before the split into heads
    q, k = q_pre, k_pre
    if site.q_norm is not None:
        q = heads(site.q_norm(q_flat)) if whole else site.q_norm(q_pre)
    if site.k_norm is not None:
        k = heads(site.k_norm(k_flat)) if whole else site.k_norm(k_pre)
    q_pre, k_pre, q, k, v = (t.to(dtype) for t in (q_pre, k_pre, q, k, v))
    cos, sin = (t.to(dtype) for t in position_embeddings)
    rotary = cos.shape[-1]
    if rotary > site.head_dim or rotary % 2:
        raise NotImplementedError(
            f"layer {site.layer}: rotary over {rotary} of {site.head_dim} dims"
        )
    if rotary < site.head_dim:  # partial rotary: the other dims pass through (cos 1, sin 0)
        rest = site.head_dim - rotary
        cos = torch.cat((cos, cos.new_ones(*cos.shape[:-1], rest)), dim=-1)
        sin = torch.cat((sin, sin.new_zeros(*sin.shape[:-1], rest)), dim=-1)
    q_rot = q * cos[:, None] + _rotate_half(q, rotary) * sin[:, None]
    k_rot = k * cos[:, None] + _rotate_half(k, rotary) * sin[:, None]
    raw = q_rot @ k_rot[:, site.kv_index(k_rot.device)].transpose(-1, -2) * site.scaling
    bias = _additive_mask(attention_mask, bsz, seq, dtype, raw.device, site.causal)
    probs = torch.softmax(raw + bias, dim=-1)
    return AttentionState(q_pre, q, q_rot, k_pre, k, k_rot, v, cos, sin, bias, raw, probs, rotary)


def _chunks(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


TILE_ELEMENTS = 2**19  # eager Q/K tile: cells per call (each op materialises one)
QUERY_BLOCK = 32  # query rows per eager tile: a causal block sees only the keys up to its end
COMPILED_TILE_ELEMENTS = 2**24  # fused Q/K kernel: cells per call (2^23: ~8% slower)
COMPILED_QUERY_BLOCK = 16  # and its query rows per tile (finer causal key ranges)
PROB_FLOOR = 2.0**-38  # ~3.6e-12: p * eps and its square stay normal float32 numbers
COMPILE_MIN_CELLS = 2**22  # auto: compile where a layer scores H * D * T * T cells or more
# the fused kernel: no buffer between the exp and the three sums over keys
_INDUCTOR = {"realize_opcount_threshold": 10**4, "realize_reads_threshold": 10**4,
             "realize_acc_reads_threshold": 10**4}  # fmt: skip
_compiled: dict[str, Callable | None] = {}


def tile_change(
    raw: torch.Tensor,
    probs: torch.Tensor,
    r0: torch.Tensor,
    r1: torch.Tensor,
    c0: torch.Tensor,
    c1: torch.Tensor,
    gq: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[..., H, c, rows]``: the norm of each head's softmax-row change when dim d is
    removed, for one tile of :func:`qk_importance_tiled`, in one pass over the keys.

    ``raw`` the scaled scores ``S`` and ``probs`` the stock probabilities ``p``, ``[...,
    H, 1, rows, keys]``. The score change is ``x = S g - r0 c0 - r1 c1`` (``r`` ``[..., H,
    c, rows, 1]``, ``c`` ``[..., H, c, 1, keys]``; ``g = f - 1`` for a q / k norm factor
    ``f`` per query ``gq`` / per key ``gk``, folded into ``r`` / ``c``: ``S' = (S - delta)
    f``). Shifted per row by its value at the row's most probable key (softmax ignores
    the shift; it keeps ``x`` small): ``eps = exp(x) - 1``, ``W = sum p (1 + eps) = 1 +
    A``, ``p' = p (1 + eps) / W`` and ``||p' - p||^2 = (sum p^2 eps^2 - 2 A sum p^2 eps
    + A^2 sum p^2) / (1 + A)^2``. Masked cells have ``p = 0`` and add nothing (any
    additive mask). Below float64, probabilities under :data:`PROB_FLOOR` count as 0:
    their products would be subnormal floats (2-3x slower on CPUs), and their change
    ``p |(1 + eps) / W - 1|`` stays under 1e-5 unless the removed dim raises that score
    by more than ~15 nats over the row's top key.
    """
    x = -(r0 * c0) - r1 * c1
    if gq is not None:
        x = x + raw * gq
    if gk is not None:
        x = x + raw * gk
    top = probs.argmax(-1, keepdim=True).expand(*x.shape[:-1], 1)  # [..., H, c, rows, 1]
    eps = torch.expm1(x - x.gather(-1, top))
    if probs.dtype != torch.float64:
        probs = torch.where(probs < PROB_FLOOR, 0.0, probs)
    pe = probs * eps
    a, b, c = pe.sum(-1), (pe * probs).sum(-1), pe.square().sum(-1)
    sq = c - 2 * a * b + a.square() * probs.square().sum(-1)
    return sq.clamp_min(0).sqrt() / (1 + a)


def use_compiled(q: torch.Tensor, compiled: bool | None = None) -> bool:
    """Whether the Q/K tiles go through the fused kernel: ``compiled`` if given, else on
    CPU where a layer's cells ``H * D * T * T`` reach :data:`COMPILE_MIN_CELLS` (Gemma 3
    270M at 128 tokens: Q/K 3.3x faster than the same ops eager; tiny models: the
    one-time compile of ~15 s would cost more than it saves). ``MLN_COMPILE=0`` turns
    it off."""
    if compiled is not None:
        return compiled
    if q.device.type != "cpu" or os.environ.get("MLN_COMPILE", "1") == "0":
        return False
    _, heads, seq, dim = q.shape
    return heads * dim * seq * seq >= COMPILE_MIN_CELLS


def compiled_tile_change() -> Callable | None:
    """:func:`tile_change` through ``torch.compile``, or ``None`` where compiling failed
    (no C++ compiler: logged once, then the eager ops serve). One graph per kind of norm
    factor: contiguous tiles (views' strides would guard recompiles), dynamic sizes not
    tied to each other by equal values at the first call, and the sums over keys fused
    with the exp (:data:`_INDUCTOR`)."""
    if "fn" not in _compiled:
        import torch._dynamo.config as dynamo
        import torch._inductor.config as inductor
        from torch.fx.experimental import _config as fx

        fn = torch.compile(tile_change, dynamic=True)

        def guarded(*args):
            if _compiled.get("fn") is not None:
                try:
                    with (
                        fx.patch(use_duck_shape=False),
                        inductor.patch(_INDUCTOR),
                        dynamo.patch(recompile_limit=32),  # sizes of 1 specialise
                    ):
                        return fn(*args)
                except Exception as err:  # the backend's compiler failed: fall back
                    log.warning("PLND Q/K: torch.compile failed (%s); eager ops instead", err)
                    _compiled["fn"] = None
            return tile_change(*args)

        _compiled["fn"] = guarded
    return _compiled["fn"]


def qk_importance(
    site: AttentionSite,
    st: AttentionState,
    parts: Iterable[str] = ("q", "k"),
    max_elements: int = 2**24,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token Q ``[B, T, H*D]`` and K ``[B, T, n_kv*D]`` importance (see module doc).

    The common case (per-head or no q/k norms) goes through
    :func:`qk_importance_tiled`; q/k norms over the whole projection (OLMo 2) through
    :func:`qk_importance_direct`. ``valid`` ``[B, T]``: the rows to score (the others
    are left 0); all rows if ``None``.
    """
    if site.qk_norm_over_projection():
        return qk_importance_direct(site, st, parts, max_elements)
    # CPU: the path's own tiles; elsewhere eager tiles, of which tile_change holds up to
    # four at once: 3/4 of the budget each (models/memory.py counts three budgets)
    tile = None if st.raw.device.type == "cpu" else max(1, max_elements * 3 // 4)
    out = qk_importance_tiled(site, st, parts, tile, valid)
    if all(bool(imp.isfinite().all()) for imp in out.values()):
        return out
    # a removed dim raised a score by more than exp's range (no max pass in the tiles)
    return qk_importance_direct(site, st, parts, max_elements)


def _spans(allowed: torch.Tensor, valid: torch.Tensor | None, block: int) -> list[list[tuple]]:
    """Per document, the tiles ``(t0, t1, k0, k1)``: query rows ``t0:t1`` (blocks of
    ``block`` valid rows) and the key range ``k0:k1`` any of them may attend to
    (``allowed``: the mask's attended cells, ``[B, 1|H, T, T]``)."""
    bsz, seq = allowed.shape[0], allowed.shape[-1]
    allowed = allowed.any(1)  # [B, T, T], any head
    idx = torch.arange(seq, device=allowed.device)
    last = torch.where(allowed, idx, -1).amax(-1)
    first = torch.where(allowed, idx, seq).amin(-1)
    rows = torch.ones(bsz, seq, dtype=torch.bool) if valid is None else valid.cpu()
    last, first = last.tolist(), first.tolist()
    out = []
    for b in range(bsz):
        where = rows[b].nonzero().flatten().tolist()
        spans = []
        if where:
            for t0 in range(where[0], where[-1] + 1, block):
                t1 = min(t0 + block, where[-1] + 1)
                k0, k1 = min(first[b][t0:t1]), max(last[b][t0:t1]) + 1
                if k1 > k0:
                    spans.append((t0, t1, k0, k1))
        out.append(spans)
    return out


def qk_importance_tiled(
    site: AttentionSite,
    st: AttentionState,
    parts: Iterable[str] = ("q", "k"),
    max_elements: int | None = None,
    valid: torch.Tensor | None = None,
    block: int | None = None,
    compiled: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Q/K importance as :func:`qk_importance_direct`, in tiles.

    Per block of query rows only the keys the block may see are read (causal: about
    half the score matrix; padding: none), for all documents that share the block's
    rows and keys, all heads and a chunk of dims at once, ``docs * H * c * rows * keys
    <= max_elements``; each tile is one call of :func:`tile_change` (one pass over the
    keys, no max pass, any additive mask). ``compiled``: the tiles through one
    ``torch.compile``-fused kernel (no tile is materialised: large tiles, few calls)
    instead of eager ops; ``None`` decides by :func:`use_compiled`. Assumes per-head
    q/k norms (:func:`qk_importance` checks).
    """
    parts = [p for p in ("q", "k") if p in set(parts)]
    bsz, heads, seq, dim = st.q.shape
    s, lowest = site.scaling, torch.finfo(st.raw.dtype).min
    kv = site.kv_index(st.q.device)

    def dims_last(x: torch.Tensor, *factors: torch.Tensor) -> torch.Tensor:
        """``x`` times ``factors`` (``[B, H|1, T, D]``), as contiguous ``[B, H, D, T]``."""
        for f in factors:
            x = x * f
        return x.transpose(-1, -2).contiguous()

    cos, sin = st.cos[:, None], st.sin[:, None]
    # per part: (row terms r0, r1 per query, column terms c0, c1 per key, g = f - 1 of
    # the norm factor f, whether f is per query): delta f = r0 c0 + r1 c1 with f folded
    # into the row (q) or column (k) terms (module doc's derivations)
    terms: dict[str, tuple] = {}
    if "q" in parts:
        f = _rms_factor(st.q_pre, site.q_norm)
        f = () if f is None else (f,)
        k_rot = st.k_rot[:, kv]
        terms["q"] = (
            dims_last(st.q * s, cos, *f),
            dims_last(-st.q * s, sin, *f),
            dims_last(k_rot),
            dims_last(_rotate_half(k_rot, st.rotary)),
            dims_last(f[0] - 1) if f else None,
            True,
        )
    if "k" in parts:
        f = _rms_factor(st.k_pre, site.k_norm)
        f = () if f is None else (f[:, kv],)
        k = st.k[:, kv] * s
        terms["k"] = (
            dims_last(st.q_rot),
            dims_last(_rotate_half(st.q_rot, st.rotary)),
            dims_last(k, cos, *f),
            dims_last(-k, sin, *f),
            dims_last(f[0] - 1) if f else None,
            False,
        )
    allowed = st.bias > lowest / 2
    out = {part: st.q.new_zeros(bsz, heads, dim, seq) for part in parts}
    kernel = compiled_tile_change() if use_compiled(st.q, compiled) else tile_change
    fast = kernel is not tile_change
    block = block or (COMPILED_QUERY_BLOCK if fast else QUERY_BLOCK)
    max_elements = max_elements or (COMPILED_TILE_ELEMENTS if fast else TILE_ELEMENTS)
    groups: dict[tuple, list[int]] = {}  # documents that share a tile's rows and keys
    for b, spans in enumerate(_spans(allowed.expand(bsz, -1, -1, -1), valid, block)):
        for span in spans:
            groups.setdefault(span, []).append(b)
    for (t0, t1, k0, k1), docs in groups.items():
        rows, keys = slice(t0, t1), slice(k0, k1)
        d = docs if len(docs) < bsz else slice(None)  # a view where all documents share it
        c = max(1, min(dim, max_elements // (len(docs) * heads * (t1 - t0) * (k1 - k0))))
        raw = st.raw[d, :, None, rows, keys]  # [docs, H, 1, rows, keys]
        probs = st.probs[d, :, None, rows, keys]
        if fast:  # contiguous tiles: strides guard no recompiles (copied once per span)
            raw, probs = raw.contiguous(), probs.contiguous()
        for part, (r0, r1, c0, c1, g, per_query) in terms.items():
            for dc in _chunks(dim, c):
                row, col = (d, slice(None), dc, rows, None), (d, slice(None), dc, None, keys)
                gq = g[row] if g is not None and per_query else None
                gk = g[col] if g is not None and not per_query else None
                terms_tile = (r0[row], r1[row], c0[col], c1[col], gq, gk)
                if fast:
                    terms_tile = tuple(None if t is None else t.contiguous() for t in terms_tile)
                change = kernel(raw, probs, *terms_tile)
                out[part][d, :, dc, rows] = change
    result = {}
    if "q" in out:
        result["q"] = out["q"].permute(0, 3, 1, 2).reshape(bsz, seq, heads * dim)
    if "k" in out:  # a kv head's change: the norm over the query heads it serves
        sq = out["k"].square()[:, site.heads_of_kv(st.q.device)].sum(2)  # [B, Hkv, D, T]
        result["k"] = sq.sqrt().permute(0, 3, 1, 2).reshape(bsz, seq, -1)
    return result


def qk_importance_direct(
    site: AttentionSite,
    st: AttentionState,
    parts: Iterable[str] = ("q", "k"),
    max_elements: int = 2**24,
) -> dict[str, torch.Tensor]:
    """Per-token Q and K importance, head by head over the full score matrix: any mask,
    and q/k norms over the whole projection.

    For each head, all its dims are handled at once in chunks of ``c`` dims such that
    ``B * c * T * T <= max_elements``. With q/k norms over the whole projection (OLMo 2)
    removing one channel rescales every head's scores (by ``rms / rms_without_c``), so the
    importance also sums the row changes of the other heads: the norm over all heads of
    the change of the attention rows, which for per-head norms is the head's own row.
    """
    parts = set(parts)
    bsz, heads, seq, dim = st.q.shape
    chunk = max(1, min(dim, max_elements // max(1, bsz * seq * seq)))
    s = site.scaling
    whole = site.qk_norm_over_projection()
    q_fac = _rms_factor(st.q_pre, site.q_norm, whole)
    k_fac = _rms_factor(st.k_pre, site.k_norm, whole)

    def by_dim(x: torch.Tensor) -> torch.Tensor:  # [B, T, c] -> [B, c, T]
        return x.transpose(1, 2)

    def row_change(h: int, new_raw: torch.Tensor) -> torch.Tensor:
        """``[B, c, T]`` squared norm over keys of the change of head h's rows."""
        bias = st.bias[:, h if st.bias.shape[1] > 1 else 0][:, None]
        new = torch.softmax(new_raw + bias, dim=-1)
        return (new - st.probs[:, h][:, None]).pow(2).sum(-1)

    out: dict[str, torch.Tensor] = {}
    if "q" in parts:
        imp = st.q.new_zeros(bsz, seq, heads * dim)
        for h in range(heads):
            g = site.kv_of_head[h]
            k_rot, k_rh = st.k_rot[:, g], _rotate_half(st.k_rot[:, g], st.rotary)
            for dc in _chunks(dim, chunk):
                # delta[t, t'] = s q[t] (R_t^T k_rot[t'])  with  R_t^T k_rot = k_rot cos_t - k_rh sin_t
                #              = [s q cos_t, -s q sin_t] . [k_rot[t'], k_rh[t']]: one batched matmul
                q_d = st.q[:, h][..., dc] * s
                rows = torch.stack(
                    (by_dim(q_d * st.cos[..., dc]), -by_dim(q_d * st.sin[..., dc])), -1
                )
                cols = torch.stack((by_dim(k_rot[..., dc]), by_dim(k_rh[..., dc])), -1)
                new_raw = st.raw[:, h][:, None] - rows @ cols.transpose(-1, -2)
                if q_fac is not None:
                    f = by_dim(q_fac[:, h][..., dc])[..., None]  # [B, c, T, 1] per query
                    new_raw = new_raw * f
                change = row_change(h, new_raw)
                if whole and q_fac is not None:  # every other head's scores scale too
                    for h2 in range(heads):
                        if h2 != h:
                            change = change + row_change(h2, st.raw[:, h2][:, None] * f)
                cols_out = slice(h * dim + dc.start, h * dim + dc.stop)
                imp[..., cols_out] = change.sqrt().transpose(1, 2)
        out["q"] = imp
    if "k" in parts:
        sq = st.k.new_zeros(bsz, seq, site.n_kv_heads * dim)
        for h in range(heads):
            g = site.kv_of_head[h]
            q_rot, q_rh = st.q_rot[:, h], _rotate_half(st.q_rot[:, h], st.rotary)
            for dc in _chunks(dim, chunk):
                # delta[t, t'] = s k[t'] (R_t'^T q_rot[t])  with  R_t'^T q_rot = q_rot cos_t' - q_rh sin_t'
                #              = [q_rot[t], q_rh[t]] . [s k cos_t', -s k sin_t']: one batched matmul
                k_d = st.k[:, g][..., dc] * s
                rows = torch.stack((by_dim(q_rot[..., dc]), by_dim(q_rh[..., dc])), -1)
                cols = torch.stack(
                    (by_dim(k_d * st.cos[..., dc]), -by_dim(k_d * st.sin[..., dc])), -1
                )
                new_raw = st.raw[:, h][:, None] - rows @ cols.transpose(-1, -2)
                if k_fac is not None:
                    new_raw = new_raw * by_dim(k_fac[:, g][..., dc])[:, :, None, :]
                cols_out = slice(g * dim + dc.start, g * dim + dc.stop)
                sq[..., cols_out] += row_change(h, new_raw).transpose(1, 2)
        if whole and k_fac is not None:  # the heads of the other kv groups: keys scale
            for g in range(site.n_kv_heads):
                for dc in _chunks(dim, chunk):
                    f = by_dim(k_fac[:, g][..., dc])[:, :, None, :]  # [B, c, 1, T] per key
                    cols_out = slice(g * dim + dc.start, g * dim + dc.stop)
                    for h2 in range(heads):
                        if site.kv_of_head[h2] != g:
                            change = row_change(h2, st.raw[:, h2][:, None] * f)
                            sq[..., cols_out] += change.transpose(1, 2)
        out["k"] = sq.sqrt()
    return out


def released_qk_importance(site: AttentionSite, o_in: torch.Tensor) -> dict[str, torch.Tensor]:
    """``released`` reading: Q = ``|o_in|`` per head dim, K = its sum over the kv group."""
    bsz, seq, _ = o_in.shape
    q = o_in.abs()
    per_head = q.reshape(bsz, seq, site.n_heads, site.head_dim)
    k = per_head[:, :, site.heads_of_kv(o_in.device)].sum(3)  # [B, T, n_kv, D]
    return {"q": q, "k": k.reshape(bsz, seq, -1)}


# ------------------------------------------------------------------ per-document scores


@dataclass
class NeuronScores:
    """Per-document scores ``[B, n_neurons]`` of one (layer, part), over non-pad tokens."""

    l2: torch.Tensor  # sqrt(sum_t imp_t^2): the paper's Imp(N | document)
    mean: torch.Tensor  # mean_t imp_t
    max: torch.Tensor  # max_t imp_t
    n_tokens: torch.Tensor  # [B] non-pad tokens per document
    tokens: torch.Tensor | None = None  # [B, T, n] per-token importance (0 at pads), if kept

    @property
    def sum(self) -> torch.Tensor:
        return self.mean * self.n_tokens[:, None]

    @property
    def rms(self) -> torch.Tensor:
        return self.l2 / self.n_tokens.clamp_min(1).sqrt()[:, None]

    def get(self, reduction: str) -> torch.Tensor:
        """The scores reduced by ``reduction`` (one of :data:`REDUCTIONS`)."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        return getattr(self, reduction)


def reduce_tokens(
    imp: torch.Tensor, valid: torch.Tensor, keep_tokens: bool = False, full: bool = False
) -> NeuronScores:
    """Reduce per-token importance ``[B, T, n]`` over the ``valid`` ``[B, T]`` tokens
    (``full``: the caller knows every token is valid, so nothing is masked)."""
    if not full:
        imp = torch.where(valid[..., None], imp, imp.new_zeros(()))  # drops NaN at pads
    n_tok = valid.sum(1).to(imp.dtype)
    return NeuronScores(
        # a sum of squares: linalg.vector_norm over a non-inner dim is ~10x slower on CPU
        l2=imp.mul(imp).sum(1).sqrt(),
        mean=imp.sum(1) / n_tok.clamp_min(1)[:, None],
        max=imp.amax(1),
        n_tokens=n_tok,
        tokens=imp if keep_tokens else None,
    )


def _o_in_error(
    site: AttentionSite, st: AttentionState, o_in: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Relative max error of the recomputed o_proj input (a device scalar: no sync here)."""
    mine, stock = st.o_in(site)[valid], o_in.to(st.probs.dtype)[valid]
    return (mine - stock).abs().max() / stock.abs().max().clamp_min(1e-12)


def _check_o_in(errors: Mapping[int, torch.Tensor], dtype: torch.dtype) -> None:
    """Raise if a layer's recomputed attention differs from the stock module's."""
    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    for layer, err in sorted(errors.items()):
        if not err.item() <= tol:
            raise RuntimeError(
                f"layer {layer}: recomputed attention differs from the stock module "
                f"(relative error {err.item():.2e} > {tol}); unsupported attention variant"
            )


def plnd_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    parts: Iterable[str] = PARTS,
    variant: str = "paper",
    layers: Iterable[int] | None = None,
    keep_tokens: bool = False,
    verify: bool = True,
    max_elements: int = 2**24,
) -> dict[Key, NeuronScores]:
    """Importance of every neuron for each document of one batch, from one forward pass.

    ``input_ids``/``attention_mask``: ``[B, T]`` (1 = token, 0 = pad; right padding keeps
    positions identical to the unpadded documents). Returns ``{(layer, part): scores}``
    for ``part`` in ``parts`` (``ffn, q, k, v, o``) and the selected ``layers``.
    ``verify`` checks the recomputed attention against the stock o_proj input.
    The model should be in eval mode; only its base model (no LM head) is run. Inputs
    go to the embedding's device; each layer's scores stay on that layer's device.
    """
    parts = tuple(dict.fromkeys(parts))
    if bad := set(parts) - set(PARTS):
        raise ValueError(f"unknown parts {sorted(bad)}; expected a subset of {PARTS}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown plnd variant {variant!r}; expected one of {VARIANTS}")
    device = input_device(model)
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    attention_mask = attention_mask.to(device)
    valid = OnDevices(attention_mask.to(torch.bool))  # the token mask, per device
    full = bool(attention_mask.all())  # no pad in the batch: nothing to mask out

    keep = None if layers is None else set(layers)
    results: dict[Key, NeuronScores] = {}

    def store(layer: int, part: str, imp: torch.Tensor) -> None:
        results[(layer, part)] = reduce_tokens(imp, valid(imp.device), keep_tokens, full)

    handles = []
    errors: dict[int, torch.Tensor] = {}  # checked once after the forward pass

    def ffn_hook(site: MLPSite) -> Callable:
        if variant == "paper":
            return lambda _m, args: store(site.layer, "ffn", ffn_importance(site, args[0]))
        cols = site.up_source()[1]
        return lambda _m, _args, output: store(site.layer, "ffn", output[..., cols].abs())

    def o_in_hook(site: AttentionSite, cache: dict[int, torch.Tensor]) -> Callable:
        def hook(_module, args):
            o_in = args[0]
            cache[site.layer] = o_in
            if "o" in parts:
                store(site.layer, "o", o_importance(site, o_in))
            if "v" in parts:
                store(site.layer, "v", v_importance(site, o_in))
            if variant == "released":
                for part, imp in released_qk_importance(site, o_in).items():
                    if part in parts:
                        store(site.layer, part, imp)

        return hook

    projected: dict[int, list[torch.Tensor]] = {}  # q/k/v outputs, kept for attn_hook

    def projection_hook(site: AttentionSite) -> Callable:
        return lambda _m, _args, output: projected.setdefault(site.layer, []).append(output)

    def attn_hook(site: AttentionSite, cache: dict[int, torch.Tensor]) -> Callable:
        # the positional parameters of this module's own forward (Llama: hidden_states,
        # position_embeddings, attention_mask; GPT-NeoX and Bloom order them otherwise)
        names = list(inspect.signature(type(site.attn).forward).parameters)[1:]

        def hook(_module, args, kwargs, _output):
            named = dict(zip(names, args, strict=False))
            named.update(kwargs)
            x = named["hidden_states"]
            outputs = projected.pop(site.layer, [])
            if len(outputs) != len(site.projections()):  # not called once each: recompute
                outputs = None
            st = attention_state(
                site, x, named.get("position_embeddings"), named.get("attention_mask"), outputs
            )
            if verify:
                errors[site.layer] = _o_in_error(site, st, cache.pop(site.layer), valid(x.device))
            qk = [p for p in ("q", "k") if p in parts]
            imps = qk_importance(site, st, qk, max_elements, valid(x.device))
            for part, imp in imps.items():
                store(site.layer, part, imp)

        return hook

    def experts_hook(site: ExpertSite) -> Callable:
        def hook(module, args, kwargs, _output):
            hidden, index, weights = expert_inputs(module, args, kwargs)
            shape = valid(hidden.device).shape
            imps = expert_importance(site, hidden, index, weights, variant)
            for j, imp in enumerate(imps):
                store(site.layer, f"ffn.e{j}", imp.reshape(*shape, -1))

        return hook

    def shared_hooks(site: ExpertSite) -> list:
        """The shared expert's FFN importance (``paper``: scaled by its sigmoid gate,
        Qwen2-MoE's ``shared_expert_gate``, which runs after the expert)."""
        shared, gate = site.shared, site.shared_gate if variant == "paper" else None
        stash: list[torch.Tensor] = []

        def finish(imp: torch.Tensor) -> None:
            store(site.layer, "ffn.shared", imp.reshape(*valid(imp.device).shape, -1))

        def emit(imp: torch.Tensor) -> None:
            (finish if gate is None else stash.append)(imp)

        def on_gate(_m, _args, output):
            imp = stash.pop()
            finish(imp * torch.sigmoid(output).to(imp.dtype))

        if variant == "paper":
            out = [
                shared.down.register_forward_pre_hook(
                    lambda _m, a: emit(ffn_importance(shared, a[0]))
                )
            ]
        else:
            cols = shared.up_source()[1]
            out = [
                shared.up_source()[0].register_forward_hook(
                    lambda _m, _a, output: emit(output[..., cols].abs())
                )
            ]
        if gate is not None:
            out.append(gate.register_forward_hook(on_gate))
        return out

    try:
        if "ffn" in parts:
            for site in ffn_sites(model):
                if keep is not None and site.layer not in keep:
                    continue
                if isinstance(site, ExpertSite):
                    hook = experts_hook(site)
                    handles.append(site.experts.register_forward_hook(hook, with_kwargs=True))
                    if site.shared is not None:
                        handles += shared_hooks(site)
                elif variant == "paper":
                    handles.append(site.down.register_forward_pre_hook(ffn_hook(site)))
                else:
                    up, _ = site.up_source()
                    handles.append(up.register_forward_hook(ffn_hook(site)))
        if any(p in ATTENTION_PARTS for p in parts):
            o_cache: dict[int, torch.Tensor] = {}
            for site in attention_sites(model):
                if keep is not None and site.layer not in keep:
                    continue
                handles.append(site.o.register_forward_pre_hook(o_in_hook(site, o_cache)))
                if variant == "paper" and ("q" in parts or "k" in parts):
                    handles.append(
                        site.attn.register_forward_hook(attn_hook(site, o_cache), with_kwargs=True)
                    )
                    for module in site.projections():
                        handles.append(module.register_forward_hook(projection_hook(site)))
        base = getattr(model, "base_model", model)
        with torch.no_grad():
            base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    _check_o_in(errors, next(model.parameters()).dtype)
    return results


# ----------------------------------------------------------------------------- selection


def _map(fn: Callable[..., torch.Tensor], x: X, *rest: X) -> X:
    """Apply ``fn`` to a tensor, or key by key to mappings of tensors."""
    if isinstance(x, Mapping):
        return {key: fn(x[key], *(r[key] for r in rest)) for key in x}
    return fn(x, *rest)


def important(x: X, epsilon: float | None = None, top_n: int | None = None) -> X:
    """Boolean mask of important neurons per document, shape as ``x`` (``[..., n]``).

    Exactly one of ``epsilon`` (``score >= epsilon``, the paper's criterion) or ``top_n``
    (the ``top_n`` highest scores along the last axis, i.e. per document and per
    (layer, part) when given one site's ``[B, n]`` scores).
    """
    if (epsilon is None) == (top_n is None):
        raise ValueError("give exactly one of epsilon and top_n")

    def one(scores: torch.Tensor) -> torch.Tensor:
        if epsilon is not None:
            return scores >= epsilon
        mask = torch.zeros_like(scores, dtype=torch.bool)
        k = min(top_n, scores.shape[-1])
        return mask.scatter_(-1, scores.topk(k, dim=-1).indices, True) if k > 0 else mask

    return _map(one, x)


def important_counts(
    scores: Mapping[Key, NeuronScores],
    reduction: str = "l2",
    epsilon: float | None = None,
    top_n: int | None = None,
) -> dict[Key, torch.Tensor]:
    """Per (layer, part): in how many documents of the batch each neuron is important."""
    return {key: important(s.get(reduction), epsilon, top_n).sum(0) for key, s in scores.items()}


def language_specific(frequency: X, n_docs: int, min_fraction: float = 1.0) -> X:
    """Neurons important in at least ``min_fraction`` of the ``n_docs`` documents of a language.

    ``min_fraction=1.0`` is the paper's intersection over all documents.
    """
    if n_docs <= 0 or not 0 < min_fraction <= 1:
        raise ValueError(f"need n_docs > 0 and 0 < min_fraction <= 1 ({n_docs}, {min_fraction})")
    need = math.ceil(min_fraction * n_docs - 1e-9)
    return _map(lambda f: f >= need, frequency)


def language_agnostic(sets_by_lang: Mapping[str, X]) -> X:
    """Neurons in the set of every language (intersection)."""
    if not sets_by_lang:
        raise ValueError("no languages")
    sets = list(sets_by_lang.values())
    out = sets[0]
    for other in sets[1:]:
        out = _map(torch.logical_and, out, other)
    return out


def specific_minus_agnostic(specific: X, agnostic: X) -> X:
    """Language-specific neurons that are not language-agnostic."""
    return _map(lambda s, a: s & ~a, specific, agnostic)

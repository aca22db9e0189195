"""Every architecture fact the workflow needs, in one place (docs/extending.md).

Each stage asks this module where things are in a stock ``transformers`` decoder:
the decoder layers; per layer the MLP neurons (:class:`MLPSite`: gate/up/down of a
gated MLP, or the input and down projection of a plain one) and the attention
projections (:class:`AttentionSite`: q/k/v/o, head layout, grouped-query mapping, q/k
norms, score scale); the final norm, the LM head and its logit soft-capping; GPT-2's
transposed ``Conv1D`` weights; the parameters inside the layers and their kinds (for
the regions). Adding an architecture means teaching this module its names and layout.

A neuron is one unit k of the MLP intermediate layer (row k of gate/up, column
k of down). Its *activation* is, as in Mu et al. and Tang et al.:

- gated MLPs (Qwen2, Llama, Mistral, Gemma): ``act_fn(gate_proj(x))``, the
  nonlinearity of the gate taken before the product with ``up_proj``;
- plain MLPs (GPT-2 ``c_fc`` + GELU, Bloom ``dense_h_to_4h`` + GELU): the output
  of the nonlinearity, i.e. the input of the down projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from workflow_scripts.models.placement import weight

GATE_NAMES = ("gate_proj", "w1")
FUSED_GATE_UP_NAMES = ("gate_up_proj",)  # one Linear: [gate; up] (Phi-3)
UP_NAMES = ("up_proj", "w3")
IN_NAMES = ("c_fc", "dense_h_to_4h", "fc1", "fc_in")
DOWN_NAMES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out", "w2")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
ACT_NAMES = ("act_fn", "act", "activation_fn", "gelu_impl")
ATTN_NAMES = ("self_attn", "attn", "self_attention", "attention")
FUSED_QKV_NAMES = ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv")
NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass
class MLPSite:
    """Where layer ``layer``'s MLP neurons live."""

    layer: int
    mlp: nn.Module
    gated: bool
    down: nn.Module
    first: nn.Module  # gate_proj (gated), fused gate_up_proj, or the input projection (plain)
    act: nn.Module | None  # the activation module, if it is a per-layer module
    size: int  # number of neurons (intermediate size)
    up: nn.Module | None = None  # up_proj of a gated MLP
    fused: bool = False  # first is one gate_up projection: gate = channels [0, I), up = [I, 2I)

    def neuron_slices(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, tuple]]:
        """(tensor, index) pairs of neurons ``idx`` in the projections before the activation:
        rows of gate and up (``k`` and ``I + k`` of a fused gate_up), or of the input."""
        if self.fused:
            return out_slices(self.first, idx) + out_slices(self.first, idx + self.size)
        projections = [self.first] + ([self.up] if self.up is not None else [])
        return [s for proj in projections for s in out_slices(proj, idx)]

    def gate_of(self, first_output: torch.Tensor) -> torch.Tensor:
        """The gate pre-activations in the output of ``first`` (a view, never a copy)."""
        return first_output[..., : self.size] if self.fused else first_output

    def up_source(self) -> tuple[nn.Module, slice]:
        """The module whose output holds ``W_up x`` (``W_in x`` of a plain MLP) and where."""
        if self.fused:
            return self.first, slice(self.size, 2 * self.size)
        return (self.up if self.up is not None else self.first), slice(None)

    def down_weight(self) -> torch.Tensor:
        """Down-projection weight as ``[hidden, intermediate]`` (column k = neuron k)."""
        w = weight(self.down)
        return w.T if is_conv1d(self.down) else w


def child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        sub = getattr(module, name, None)
        if isinstance(sub, nn.Module):
            return sub
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks (``model.model.layers``, ``transformer.h`` ...)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: nn.ModuleList | None = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if child(module[0], MLP_NAMES) is None:
                continue
            if n_layers is None or len(module) == n_layers:
                if best is None or len(module) > len(best):
                    best = module
    if best is None:
        raise ValueError(
            f"{type(model).__name__}: found no list of decoder layers with an MLP "
            f"(looked for submodules named {MLP_NAMES})"
        )
    return best


def is_conv1d(proj: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores its weight as ``[in, out]`` (``nn.Linear``: ``[out, in]``)."""
    return type(proj).__name__ == "Conv1D"


def out_features(proj: nn.Module) -> int:
    w = proj.weight
    return w.shape[1] if is_conv1d(proj) else w.shape[0]


def out_slices(proj: nn.Module, idx: torch.Tensor) -> list[tuple[torch.Tensor, tuple]]:
    """(tensor, index) pairs holding output channels ``idx`` of ``proj`` (weight and bias)."""
    w = (proj.weight, (slice(None), idx)) if is_conv1d(proj) else (proj.weight, (idx,))
    bias = getattr(proj, "bias", None)
    return [w] + ([(bias, (idx,))] if isinstance(bias, torch.Tensor) else [])


def in_slices(proj: nn.Module, idx: torch.Tensor) -> list[tuple[torch.Tensor, tuple]]:
    """(tensor, index) pairs holding input channels ``idx`` of ``proj`` (weight only)."""
    return [(proj.weight, (idx,))] if is_conv1d(proj) else [(proj.weight, (slice(None), idx))]


def mlp_sites(model: nn.Module) -> list[MLPSite]:
    """One :class:`MLPSite` per decoder layer, for gated and plain MLPs.

    Raises ``NotImplementedError`` naming the layer for a mixture-of-experts block:
    the stages that handle experts call :func:`ffn_sites`.
    """
    sites = ffn_sites(model)
    moe = [s for s in sites if isinstance(s, ExpertSite)]
    if moe:
        raise NotImplementedError(
            f"layer {moe[0].layer}: {type(moe[0].block).__name__} is a mixture-of-experts "
            "block; this stage reads dense MLPs only (counting, LAPE, routing statistics "
            "and ablation handle experts)"
        )
    return sites


def ffn_sites(model: nn.Module) -> list[MLPSite | ExpertSite]:
    """One site per decoder layer: an :class:`MLPSite`, or an :class:`ExpertSite` for a
    mixture-of-experts block (layers of one model may mix both, as Qwen2-MoE can)."""
    layers = decoder_layers(model)
    sites: list[MLPSite | ExpertSite] = []
    for i, block in enumerate(layers):
        mlp = child(block, MLP_NAMES)
        experts = _expert_site(i, mlp)
        if experts is not None:
            sites.append(experts)
            continue
        sites.append(_mlp_site(i, mlp))
    dense = [s for s in sites if isinstance(s, MLPSite)]
    dense += [s.shared for s in sites if isinstance(s, ExpertSite) and s.shared is not None]
    acts = [s.act for s in dense if s.act is not None]
    if len({id(a) for a in acts}) < len(acts):  # one shared module: hooks can't tell layers apart
        for s in dense:
            s.act = None
    return sites


def _mlp_site(i: int, mlp: nn.Module) -> MLPSite:
    """The :class:`MLPSite` of a dense MLP module (layer ``i``), or a clear error."""
    down = child(mlp, DOWN_NAMES)
    fused = child(mlp, FUSED_GATE_UP_NAMES)
    gate = child(mlp, GATE_NAMES) if fused is None else fused
    first = gate if gate is not None else child(mlp, IN_NAMES)
    if down is None or first is None:
        raise ValueError(
            f"layer {i}: unsupported MLP {type(mlp).__name__} "
            f"(children: {[n for n, _ in mlp.named_children()]})"
        )
    act = child(mlp, ACT_NAMES)
    up = child(mlp, UP_NAMES) if gate is not None and fused is None else None
    size = out_features(first) // (2 if fused is not None else 1)
    return MLPSite(i, mlp, gate is not None, down, first, act, size, up=up, fused=fused is not None)


# ------------------------------------------------------------------ mixture of experts

EXPERTS_NAMES = ("experts",)
ROUTER_NAMES = ("gate", "router")
SHARED_EXPERT_NAMES = ("shared_expert", "shared_experts")


@dataclass
class ExpertSite:
    """Layer ``layer``'s mixture-of-experts block (Mixtral, Qwen2-MoE in transformers 5).

    The router returns ``(logits, top-k weights, top-k indices)`` over the block's
    flattened tokens; the experts module takes ``(hidden[N, H], top_k_index[N, k],
    top_k_weights[N, k])`` and holds every expert as 3-D weights, ``gate_up_proj``
    ``[E, 2I, H]`` (gate = rows ``[0, I)``) and ``down_proj`` ``[E, H, I]``. Neuron k of
    expert j is the module ``mlp.e{j}``'s unit k: its activation is ``act_fn(gate_j x)``
    on the tokens routed to j. A shared expert (Qwen2-MoE), seen by every token, is a
    dense :class:`MLPSite` whose units are module ``mlp.shared``.
    """

    layer: int
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    n_experts: int
    top_k: int
    size: int  # neurons per expert
    shared: MLPSite | None = None
    shared_gate: nn.Module | None = None  # Qwen2-MoE: sigmoid(gate(x)) scales the shared expert

    def modules(self) -> list[tuple[str, int]]:
        """``(module, width)`` of this layer's neuron groups, in column order."""
        out = [(f"mlp.e{j}", self.size) for j in range(self.n_experts)]
        return out + ([("mlp.shared", self.shared.size)] if self.shared is not None else [])

    def expert_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gate_up[E, 2I, H], down[E, H, I])`` on the experts' execution device."""
        return weight(self.experts, "gate_up_proj"), weight(self.experts, "down_proj")

    def gate_activations(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """``act_fn(gate x)`` ``[N, I]`` of expert ``expert`` (the gate rows only)."""
        gate_up, _ = self.expert_weights()
        return self.experts.act_fn(nn.functional.linear(x, gate_up[expert, : self.size]))

    def activations(
        self, x: torch.Tensor, expert: int, neurons: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(act_fn(gate x), up x)`` ``[N, I]`` of expert ``expert`` on rows ``x[N, H]``
        (``[N, len(neurons)]``: only those neurons' gate and up rows)."""
        gate_up, _ = self.expert_weights()
        if neurons is None:
            gate, up = nn.functional.linear(x, gate_up[expert]).chunk(2, dim=-1)
        else:
            rows = torch.cat([neurons, neurons + self.size])
            gate, up = nn.functional.linear(x, gate_up[expert, rows]).chunk(2, dim=-1)
        return self.experts.act_fn(gate), up


def _expert_site(i: int, block: nn.Module) -> ExpertSite | None:
    """The :class:`ExpertSite` of a sparse MoE block (None for a dense MLP)."""
    experts = child(block, EXPERTS_NAMES)
    if experts is None:
        return None
    router = child(block, ROUTER_NAMES)
    have = {
        n: isinstance(getattr(experts, n, None), torch.Tensor)
        for n in ("gate_up_proj", "down_proj")
    }
    if router is None or not all(have.values()) or not hasattr(experts, "act_fn"):
        missing = [n for n, ok in have.items() if not ok] + ([] if router else ["router"])
        missing += [] if hasattr(experts, "act_fn") else ["act_fn"]
        raise NotImplementedError(
            f"layer {i}: mixture-of-experts block {type(block).__name__} "
            f"({type(experts).__name__}) lacks {missing}: supported are experts stored as "
            "3-D gate_up_proj [E, 2I, H] and down_proj [E, H, I] with a top-k router "
            "(Mixtral, Qwen2-MoE)"
        )
    layout = {"is_transposed": False, "is_concatenated": True, "has_bias": False, "has_gate": True}
    odd = [f"{k}={getattr(experts, k)}" for k, v in layout.items() if getattr(experts, k, v) != v]
    if odd:
        raise NotImplementedError(
            f"layer {i}: {type(experts).__name__} stores its experts with {', '.join(odd)}; "
            "supported: [gate; up] concatenated, not transposed, gated, no bias"
        )
    gate_up = experts.gate_up_proj
    n_experts, two_i, _ = gate_up.shape
    top_k = getattr(router, "top_k", None) or getattr(block, "top_k", None)
    if not top_k:
        raise NotImplementedError(f"layer {i}: router {type(router).__name__} has no top_k")
    shared = child(block, SHARED_EXPERT_NAMES)
    return ExpertSite(
        layer=i,
        block=block,
        router=router,
        experts=experts,
        n_experts=int(n_experts),
        top_k=int(top_k),
        size=int(two_i) // 2,
        shared=_mlp_site(i, shared) if shared is not None else None,
        shared_gate=child(block, ("shared_expert_gate",)) if shared is not None else None,
    )


def layer_modules(sites: Sequence[MLPSite | ExpertSite]) -> list[list[tuple[str, int]]]:
    """Per layer, ``(module, width)`` of its neuron groups: ``[("mlp", I)]`` for a dense
    MLP, ``[("mlp.e0", I), ..., ("mlp.shared", I_s)]`` for experts."""
    return [s.modules() if isinstance(s, ExpertSite) else [("mlp", s.size)] for s in sites]


# --------------------------------------------------------------------------- attention


@dataclass
class AttentionSite:
    """Where layer ``layer``'s attention neurons live: separate q/k/v projections, or one
    fused ``qkv`` whose output is ``[q; k; v]`` concatenated (Phi-3) or interleaved per
    head (GPT-NeoX, Bloom), and ``o``."""

    layer: int
    attn: nn.Module
    q: nn.Module | None  # None when fused into qkv
    k: nn.Module | None
    v: nn.Module | None
    o: nn.Module
    q_norm: nn.Module | None  # per-head RMSNorm after q_proj (Gemma 3), else None
    k_norm: nn.Module | None
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float  # the module's own score scale (Gemma: query_pre_attn_scalar**-0.5)
    causal: bool = True
    # kv head used by each query head; the stock convention (repeat_kv) is h // group
    kv_of_head: tuple[int, ...] = field(default=())
    qkv: nn.Module | None = None  # one fused projection of q, k and v
    qkv_layout: str = "separate"  # "concat": [q; k; v]; "interleaved": per head [q_h; k_h; v_h]

    def __post_init__(self) -> None:
        if not self.kv_of_head:
            group = self.n_heads // self.n_kv_heads
            self.kv_of_head = tuple(h // group for h in range(self.n_heads))

    def heads_of(self, g: int) -> list[int]:
        """The query heads served by kv head ``g``."""
        return [h for h, kv in enumerate(self.kv_of_head) if kv == g]

    def heads_of_kv(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[n_kv_heads, group]`` index of the query heads served by each kv head."""
        heads = [self.heads_of(g) for g in range(self.n_kv_heads)]
        return torch.tensor(heads, dtype=torch.long, device=device)

    def kv_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[n_heads]``: the kv head each query head reads."""
        return torch.tensor(self.kv_of_head, dtype=torch.long, device=device)

    def o_weight(self) -> torch.Tensor:
        """``o_proj`` weight as ``[hidden, n_heads * head_dim]`` (column c = O neuron c)."""
        return weight(self.o)

    def size(self, part: str) -> int:
        """Number of neurons of ``part`` (q, k, v or o) in this layer."""
        heads = self.n_kv_heads if part in ("k", "v") else self.n_heads
        return heads * self.head_dim

    def qk_norm_over_projection(self) -> bool:
        """True if q/k are normalised over the whole projection (OLMo 2), not per head."""
        norm = self.q_norm if self.q_norm is not None else self.k_norm
        width = getattr(norm, "weight", None)
        return width is not None and width.shape[-1] != self.head_dim

    def projection(self, part: str) -> tuple[nn.Module, torch.Tensor]:
        """``(module, channels)``: output channel c of ``part`` (q, k or v) is channel
        ``channels[c]`` of ``module``: its own projection, or the fused qkv (concatenated
        ``[q; k; v]``, or per head ``[q_h; k_h; v_h]``); ``channels`` on the host."""
        c = torch.arange(self.size(part), device="cpu")
        if self.qkv is None:
            return getattr(self, part), c
        if self.qkv_layout == "concat":
            offset = {"q": 0, "k": self.size("q"), "v": self.size("q") + self.size("k")}[part]
            return self.qkv, c + offset
        d = self.head_dim  # interleaved: no grouped-query attention (n_kv == n_heads)
        return self.qkv, (c // d) * 3 * d + "qkv".index(part) * d + c % d

    def projections(self) -> tuple[nn.Module, ...]:
        """The modules whose outputs :meth:`split` turns into ``(q, k, v)``."""
        return (self.q, self.k, self.v) if self.qkv is None else (self.qkv,)

    def project(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q, k, v)`` projections ``[B, T, heads * head_dim]`` of ``hidden`` (views of one
        output when fused)."""
        return self.split([module(hidden) for module in self.projections()])

    def split(
        self, outputs: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q, k, v)`` from the outputs of :meth:`projections`, in their order."""
        if self.qkv is None:
            q, k, v = outputs
            return q, k, v
        (out,) = outputs
        if self.qkv_layout == "concat":
            nq, nk = self.size("q"), self.size("k")
            return out[..., :nq], out[..., nq : nq + nk], out[..., nq + nk :]
        per_head = out.view(*out.shape[:-1], self.n_heads, 3 * self.head_dim)
        return tuple(t.flatten(-2) for t in per_head.chunk(3, dim=-1))


def norm_eps(norm: nn.Module) -> float:
    for name in ("eps", "variance_epsilon"):
        if isinstance(getattr(norm, name, None), float):
            return getattr(norm, name)
    raise NotImplementedError(f"{type(norm).__name__}: unknown epsilon of the q/k norm")


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """One :class:`AttentionSite` per decoder layer (llama, qwen2, mistral, gemma3).

    A fused ``nn.Linear`` qkv is read through views: ``qkv_proj`` ``[q; k; v]``
    concatenated (Phi-3), ``query_key_value`` interleaved per head (GPT-NeoX, Bloom).
    Raises ``NotImplementedError`` for GPT-2's ``Conv1D`` ``c_attn``: score it with
    ``parts=("ffn",)``.
    """
    sites = []
    for i, block in enumerate(decoder_layers(model)):
        attn = child(block, ATTN_NAMES)
        if attn is None:
            raise ValueError(f"layer {i}: no attention module (looked for {ATTN_NAMES})")
        projs = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        fused = _fused_qkv_site(i, model, attn)
        if fused is not None:
            sites.append(fused)
            continue
        if any(not isinstance(p, nn.Linear) for p in projs):
            fused = [n for n in FUSED_QKV_NAMES if hasattr(attn, n)]
            raise NotImplementedError(
                f"layer {i}: {type(attn).__name__} has no separate nn.Linear q_proj/k_proj/"
                f"v_proj/o_proj (fused: {fused or 'unknown layout'}); PLND attention neurons "
                "are supported for llama, qwen2, mistral, gemma3, olmo2, starcoder2, phi3, "
                "gpt_neox and bloom. "
                "Score the FFN alone with parts=('ffn',)."
            )
        q, k, v, o = projs
        cfg = getattr(model, "config", None)
        head_dim = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None)
        if not head_dim:
            head_dim = cfg.hidden_size // cfg.num_attention_heads
        n_heads, n_kv = q.out_features // head_dim, k.out_features // head_dim
        if n_heads * head_dim != q.out_features or n_kv * head_dim != k.out_features:
            raise ValueError(f"layer {i}: q/k widths are not multiples of head_dim {head_dim}")
        if n_heads % n_kv or v.out_features != k.out_features:
            raise ValueError(f"layer {i}: {n_heads} query heads, {n_kv} kv heads: bad grouping")
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        for norm in (q_norm, k_norm):
            if norm is not None and "RMSNorm" not in type(norm).__name__:
                raise NotImplementedError(f"layer {i}: q/k norm {type(norm).__name__}")
        sites.append(
            _site(
                i, attn, n_heads, n_kv, head_dim, q=q, k=k, v=v, o=o, q_norm=q_norm, k_norm=k_norm
            )
        )
    return sites


def config_sizes(config) -> dict[str, int]:
    """hidden, inter (MLP width), layers, heads, kv_heads, head_dim, vocab from a config,
    whatever the family calls them (``n_embd``, ``n_head``, ``n_inner`` ...)."""
    cfg = getattr(config, "text_config", None) or config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    return {
        "hidden": hidden,
        "inter": getattr(cfg, "intermediate_size", None)
        or getattr(cfg, "n_inner", None)
        or 4 * hidden,
        "layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1),
        "heads": heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or heads,
        "head_dim": getattr(cfg, "head_dim", None) or hidden // max(1, heads),
        "vocab": getattr(cfg, "vocab_size", 0),
    }


FUSED_QKV_LAYOUTS = {  # fused name -> (layout, output projection name)
    "qkv_proj": ("concat", "o_proj"),  # Phi-3
    "query_key_value": ("interleaved", "dense"),  # GPT-NeoX, Bloom
}


def _fused_qkv_site(layer: int, model: nn.Module, attn: nn.Module) -> AttentionSite | None:
    """The site of a fused ``nn.Linear`` qkv projection (None if ``attn`` has none);
    head counts from the config, the output width checked against the layout."""
    found = [
        (name, layout, getattr(attn, name), getattr(attn, o_name))
        for name, (layout, o_name) in FUSED_QKV_LAYOUTS.items()
        if isinstance(getattr(attn, name, None), nn.Linear)
        and isinstance(getattr(attn, o_name, None), nn.Linear)
    ]
    if not found:
        return None
    name, layout, qkv, o = found[0]
    sizes = config_sizes(model.config)
    n_heads, n_kv = sizes["heads"], sizes["kv_heads"]
    head_dim = getattr(attn, "head_dim", None) or sizes["hidden"] // n_heads
    if layout == "interleaved" and n_kv != n_heads:
        raise NotImplementedError(f"layer {layer}: interleaved {name} with grouped-query heads")
    if qkv.out_features != (n_heads + 2 * n_kv) * head_dim or n_heads % n_kv:
        raise ValueError(
            f"layer {layer}: fused {name} has {qkv.out_features} outputs, not "
            f"({n_heads} + 2 x {n_kv}) x {head_dim} ({layout} q, k, v)"
        )
    return _site(
        layer,
        attn,
        n_heads,
        n_kv,
        head_dim,
        q=None,
        k=None,
        v=None,
        o=o,
        q_norm=None,
        k_norm=None,
        qkv=qkv,
        qkv_layout=layout,
    )


def _site(
    layer: int, attn: nn.Module, n_heads: int, n_kv: int, head_dim: int, **where
) -> AttentionSite:
    """An :class:`AttentionSite` with the module's own score scale and causality."""
    scaling = getattr(attn, "scaling", None)
    return AttentionSite(
        layer=layer,
        attn=attn,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        scaling=float(scaling) if scaling is not None else head_dim**-0.5,
        causal=bool(getattr(attn, "is_causal", True)),
        **where,
    )


# ------------------------------------------------------------------ summary and check


def parallel_block(model: nn.Module) -> bool:
    """True if attention and MLP read the same block input (GPT-NeoX's
    ``use_parallel_residual``, GPT-J, Falcon's ``parallel_attn``). Hooks read each module's
    own input, so no stage computes differently; the summary reports it."""
    cfg = getattr(model, "config", None)
    for name in ("use_parallel_residual", "parallel_attn", "parallel_block"):
        if isinstance(getattr(cfg, name, None), bool):
            return getattr(cfg, name)
    return getattr(cfg, "model_type", "") in ("gptj", "phi", "cohere")


def summary(model: nn.Module) -> dict:
    """The decoder's anatomy as the stages read it (logged when a job loads a model):
    layers, MLP kind per layer, attention layout, heads, q/k norm, rotary share, block."""
    ffn = ffn_sites(model)
    kinds = []
    for s in ffn:
        if isinstance(s, ExpertSite):
            shared = " + shared expert" if s.shared is not None else ""
            kinds.append(f"experts ({s.n_experts}, top {s.top_k}, width {s.size}){shared}")
        else:
            kind = "fused gate_up" if s.fused else "gated" if s.gated else "plain"
            kinds.append(f"{kind} (width {s.size})")
    out = {"layers": len(ffn), "mlp": sorted(set(kinds))}
    try:
        attn = attention_sites(model)[0]
    except (NotImplementedError, ValueError) as err:
        out["attention"] = f"not readable: {err}"
    else:
        norm = attn.q_norm if attn.q_norm is not None else attn.k_norm
        out["attention"] = attn.qkv_layout if attn.qkv is not None else "separate"
        out.update(heads=attn.n_heads, kv_heads=attn.n_kv_heads, head_dim=attn.head_dim)
        out["qk_norm"] = (
            "none"
            if norm is None
            else "whole projection"
            if attn.qk_norm_over_projection()
            else "per head"
        )
    cfg = getattr(model, "config", None)
    rope = getattr(cfg, "rope_parameters", None) or {}
    rotary = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    rotary = (
        rotary or getattr(cfg, "partial_rotary_factor", None) or getattr(cfg, "rotary_pct", None)
    )
    out["rotary_share"] = float(rotary) if rotary is not None else 1.0
    out["parallel_block"] = parallel_block(model)
    return out


def expert_sites(model: nn.Module) -> list[ExpertSite]:
    """The mixture-of-experts layers of ``model``; a clear error if it has none."""
    sites = [s for s in ffn_sites(model) if isinstance(s, ExpertSite)]
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no mixture-of-experts layer: routing statistics "
            "and expert selections need one (Mixtral, Qwen2-MoE)"
        )
    return sites


def check_supported(model: nn.Module, stage: str, parts: Sequence[str] = ()) -> None:
    """Build every description ``stage`` will read, so that an unsupported model fails
    when it is loaded, naming the layer, the module class and what is missing, not with
    a shape error mid-run. ``parts``: PLND's parts."""
    if stage == "experts":
        expert_sites(model)
    elif stage in ("actcount", "lape") or "ffn" in parts:
        ffn_sites(model)
    if stage == "plnd" and set(parts) & {"q", "k", "v", "o"}:
        attention_sites(model)


# ------------------------------------------------------------------ final norm and head


def final_norm_module(model: nn.Module) -> nn.Module:
    """The final norm of the trunk (``norm``, ``ln_f``, ``final_layer_norm`` ...)."""
    base = model.base_model
    for owner in (base, getattr(base, "decoder", None)):
        for name in NORM_NAMES:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
    raise ValueError(
        f"{type(model).__name__}: found no final norm in the base model "
        f"(looked for {NORM_NAMES}); use final_norm=False"
    )


def lm_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings)")
    return head


def logit_softcap(model: nn.Module) -> float | None:
    """Gemma's ``final_logit_softcapping`` (logits = tanh(logits / cap) * cap), or None."""
    cfg = getattr(model, "config", None)
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap is None and hasattr(cfg, "get_text_config"):
        cap = getattr(cfg.get_text_config(), "final_logit_softcapping", None)
    return float(cap) if cap else None


# ------------------------------------------------------------------ layer parameters


def layers_prefix(model: nn.Module) -> str:
    """Qualified name of the module list holding the transformer blocks."""
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError(f"{type(model).__name__}: transformer layers not found")


def region_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters inside the transformer layers, by qualified name (norms and biases included)."""
    prefix = layers_prefix(model) + "."
    params = {n: p for n, p in model.named_parameters() if n.startswith(prefix)}
    if not params:
        raise ValueError(f"{type(model).__name__}: no parameter inside the transformer layers")
    return params


def param_kind(name: str, ndim: int) -> str:
    """``matrix`` (2-D and up), ``norm`` (a norm's scale vector) or ``bias``."""
    if ndim >= 2:
        return "matrix"
    module = name.rsplit(".", 2)[-2].lower()
    return "norm" if "norm" in module or module.startswith("ln") else "bias"


def param_layer(name: str, prefix: str) -> int:
    """Layer number of a parameter named ``{prefix}.{layer}.…``."""
    return int(name[len(prefix) + 1 :].split(".", 1)[0])


def param_module(name: str, prefix: str) -> str:
    """The parameter's name inside its layer, e.g. ``mlp.down_proj.weight``."""
    return name[len(prefix) + 1 :].split(".", 1)[1]


def common_layers_prefix(names: Sequence[str]) -> str:
    """``model.layers`` from names like ``model.layers.3.mlp.up_proj.weight``."""
    for name in names:
        bits = name.split(".")
        for i, bit in enumerate(bits):
            if bit.isdigit():
                return ".".join(bits[:i])
    raise ValueError("regions: no layer-numbered tensor among the scores")

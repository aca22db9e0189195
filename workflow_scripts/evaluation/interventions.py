"""Interventions on units and on the residual stream (docs/methods.md, "Interventions").

A unit is ``(layer, module, index)`` as in the selection tables
(:mod:`workflow_scripts.units`). Every intervention acts on the unit's *activation*, the
value at its hook point (docs/methods.md, "Ablation"):

- ``mlp`` k: channel k of the down projection's input (``act(gate) * up``, or
  ``act(W_in x)`` of a plain MLP: the neuron's whole contribution);
- ``q``/``k``/``v`` c: output channel c of that projection (the channel of a fused qkv
  that ``AttentionSite.projection`` maps c to; before Gemma 3's or OLMo 2's
  ``q_norm``/``k_norm``);
- ``o`` c: input channel c of ``o_proj``;
- ``mlp.e<j>`` k / ``mlp.shared`` k: neuron k of routed expert j / of the shared expert;
- ``expert`` j: routed expert j itself.

Interventions (:class:`Intervention`):

- ``zero``: the activation set to 0 (the papers' deactivation). With ``mode="weights"``
  the rows/columns are zeroed in place instead: row k of gate/up (``W_in``) and column
  k of down; q/k/v output rows (and biases); o input columns; an expert neuron's rows
  k and I + k of ``gate_up_proj`` and column k of ``down_proj``. ``expert`` j is routed
  around (the router's top-k taken with j's logit at -inf; a hook in both modes);
- ``scale``: the activation times ``factor`` (0 = zero, > 1 amplifies);
- ``mean``: the activation replaced by its mean over the reference text (all
  languages pooled, or one language: :func:`unit_values`);
- ``set``: the activation replaced by ``factor`` times a statistic of the *target*
  language's activation (its mean, or its mean where positive: the value it takes when
  it fires): Tang et al.'s "activate the target language's neurons";
- ``steer``: not a unit intervention: ``factor`` x a direction added to the residual
  stream (the output of chosen decoder layers) at every position (:func:`steered`;
  DiffMean: ``mu_l(target) - mu_l(source)``).

``scale``, ``mean`` and ``set`` are hooks only (``mode="hooks"``) and apply to dense
units (``mlp``, q/k/v/o); on expert units they raise (a documented limit: routed
experts have no per-expert activation tensor to edit). Every context restores the model
exactly on exit, also after an exception, and validates every unit before changing
anything.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from workflow_scripts.models.anatomy import (
    ExpertSite,
    attention_sites,
    decoder_layers,
    ffn_sites,
    in_slices,
    out_slices,
)
from workflow_scripts.models.hooks import expert_inputs, routed_rows, routed_weight
from workflow_scripts.models.placement import check_editable, execution_device
from workflow_scripts.units import (
    ATTENTION,
    DENSE_MODULES,
    EXPERT,
    expert_of,
    family,
    unknown_modules,
)

log = logging.getLogger(__name__)

Unit = tuple[int, str, int]  # (layer, module, index): workflow_scripts/units.py
MODES = ("hooks", "weights")
INTERVENTIONS = ("zero", "scale", "mean", "set", "steer")
UNIT_INTERVENTIONS = ("zero", "scale", "mean", "set")
STATISTICS = ("mean", "positive_mean")  # what ``set`` sets a unit to (unit_stats columns)


@dataclass(frozen=True)
class Intervention:
    """One intervention: ``kind`` (INTERVENTIONS); ``factor``: the scale of ``scale``, the
    multiplier of ``set``'s statistic, the strength of ``steer``; ``statistic``: which
    target-language statistic ``set`` uses; ``reference``: the text ``mean`` averages
    over (``all`` languages pooled, or a language code)."""

    kind: str = "zero"
    factor: float = 1.0
    statistic: str = "mean"
    reference: str = "all"

    def __post_init__(self) -> None:
        if self.kind not in INTERVENTIONS:
            raise ValueError(f"intervention must be one of {INTERVENTIONS}, got {self.kind!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise ValueError(
                f"intervention {self.kind}: factor must be a number, got {self.factor!r}"
            )
        if self.statistic not in STATISTICS:
            raise ValueError(
                f"intervention set: statistic must be one of {STATISTICS}, got {self.statistic!r}"
            )

    @property
    def needs_values(self) -> bool:
        return self.kind in ("mean", "set")

    def describe(self) -> dict:
        """The settings that define it (for tables' metadata)."""
        out = asdict(self)
        if self.kind != "set":
            out.pop("statistic")
        if self.kind != "mean":
            out.pop("reference")
        if self.kind in ("zero", "mean"):
            out.pop("factor")
        return out


# ------------------------------------------------------------------------- the plan


def as_unit(u: Sequence) -> Unit:
    """``(int layer, str module, int index)`` of any 3-sequence."""
    layer, module, index = u
    return int(layer), str(module), int(index)


def _group_units(units: Iterable[Unit]) -> dict[tuple[int, str], list[int]]:
    groups: dict[tuple[int, str], set[int]] = {}
    for layer, module, index in map(as_unit, units):
        bad = unknown_modules([module])
        if bad:
            raise ValueError(f"deactivate: unknown module {module!r} (workflow_scripts/units.py)")
        groups.setdefault((layer, module), set()).add(index)
    return {key: sorted(v) for key, v in sorted(groups.items())}


def _layer_site(sites: Sequence, layer: int):
    if not 0 <= layer < len(sites):
        raise ValueError(f"deactivate: layer {layer} out of range (model has {len(sites)})")
    return sites[layer]


def _expert_layer(site, layer: int, module: str) -> ExpertSite:
    if not isinstance(site, ExpertSite):
        raise ValueError(f"deactivate: layer {layer} has no experts, so no {module!r} units")
    return site


def _check_range(layer: int, module: str, indices: Sequence[int], size: int) -> None:
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise ValueError(f"deactivate: layer {layer} {module} has {size} units, not {bad[:5]}")


def _plan(model: nn.Module, groups: Mapping[tuple[int, str], list[int]]) -> list[tuple]:
    """Per (layer, module): (hook kind, hooked module, channels, weight slices to zero,
    the (layer, module) key or None).

    Kinds: ``pre`` edits input channels, ``out`` output channels (in the order of the
    group's sorted indices), ``experts`` removes expert neurons' contributions from the
    experts module's output, ``route`` takes experts out of the router's choice.
    """
    families = {family(m) for _, m in groups}
    fsites = ffn_sites(model) if "mlp" in families or EXPERT in families else []
    asites = attention_sites(model) if families & set(ATTENTION) else []
    plan = []
    experts: dict[int, dict[int, torch.Tensor]] = {}  # layer -> expert -> neurons
    for (layer, module), indices in groups.items():
        idx = torch.tensor(indices, dtype=torch.long, device="cpu")
        if module == EXPERT:
            site = _expert_layer(_layer_site(fsites, layer), layer, module)
            _check_range(layer, module, indices, site.n_experts)
            if len(indices) > site.n_experts - site.top_k:
                raise ValueError(
                    f"deactivate: layer {layer} routes every token to {site.top_k} of "
                    f"{site.n_experts} experts; {len(indices)} cannot be removed"
                )
            plan.append(("route", site, idx.to(execution_device(site.router)), [], None))
            continue
        if family(module) == "mlp":
            site = _layer_site(fsites, layer)
            j = expert_of(module)
            if j is not None:  # neurons inside routed expert j
                site = _expert_layer(site, layer, module)
                if j >= site.n_experts:
                    raise ValueError(
                        f"deactivate: layer {layer} has {site.n_experts} experts, no {module!r}"
                    )
                _check_range(layer, module, indices, site.size)
                experts.setdefault(layer, {})[j] = idx
                continue
            if module == "mlp.shared":
                site = _expert_layer(site, layer, module).shared
                if site is None:
                    raise ValueError(f"deactivate: layer {layer} has no shared expert")
            elif isinstance(site, ExpertSite):
                raise ValueError(
                    f"deactivate: layer {layer} is a mixture of experts: name its neurons "
                    "mlp.e<j> or mlp.shared, not mlp"
                )
            _check_range(layer, module, indices, site.size)
            idx = idx.to(execution_device(site.down))
            slices = site.neuron_slices(idx) + in_slices(site.down, idx)
            plan.append(("pre", site.down, idx, slices, (layer, module)))
            continue
        site = _layer_site(asites, layer)
        _check_range(layer, module, indices, site.size(module))
        if module == "o":
            idx = idx.to(execution_device(site.o))
            plan.append(("pre", site.o, idx, in_slices(site.o, idx), (layer, module)))
        else:  # q/k/v: channels of its own projection, or of the fused qkv
            hooked, channels = site.projection(module)
            idx = channels[idx].to(execution_device(hooked))
            plan.append(("out", hooked, idx, out_slices(hooked, idx), (layer, module)))
    for layer, by_expert in experts.items():
        site = fsites[layer]
        device = execution_device(site.experts)
        by_expert = {j: idx.to(device) for j, idx in sorted(by_expert.items())}
        gate_up, down = site.experts.gate_up_proj, site.experts.down_proj
        slices = [
            s
            for j, idx in by_expert.items()
            for s in (
                (gate_up, (j, idx)),
                (gate_up, (j, idx + site.size)),
                (down, (j, slice(None), idx)),
            )
        ]
        plan.append(("experts", site, by_expert, slices, None))
    return plan


def _editor(idx: torch.Tensor, intervention: Intervention, values: torch.Tensor | None):
    """``x -> x`` with channels ``idx`` of the last dimension changed as ``intervention``
    says (``values``: one per channel, for ``mean`` and ``set``); nothing else changes."""
    if intervention.kind == "zero" or (intervention.kind == "scale" and intervention.factor == 0):
        return lambda x: x.index_fill(-1, idx, 0)
    if intervention.kind == "scale":
        factor = float(intervention.factor)
        return lambda x: x.index_copy(-1, idx, x.index_select(-1, idx) * factor)
    scale = float(intervention.factor) if intervention.kind == "set" else 1.0
    target = (values.double() * scale).to(idx.device)

    def edit(x: torch.Tensor) -> torch.Tensor:
        return x.index_copy(-1, idx, target.to(x.dtype).expand(*x.shape[:-1], idx.numel()))

    return edit


def _on_rows(edit, rows: slice | None):
    """``edit`` applied to batch rows ``rows`` only (all rows: None)."""
    if rows is None:
        return edit

    def on_rows(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[rows] = edit(x[rows])
        return out

    return on_rows


def _input_hook(edit):
    def hook(_module, args):
        return (edit(args[0]), *args[1:])

    return hook


def _output_hook(edit):
    def hook(_module, _args, output):
        return edit(output)

    return hook


def _remove_expert_neurons(site: ExpertSite, by_expert: Mapping[int, torch.Tensor]):
    """Subtract neurons' contributions ``w_j * (act * up)_k * down_j[:, k]`` from the
    experts' output, on the tokens routed to each expert j (equal, up to rounding, to
    zeroing their rows of gate_up and columns of down)."""

    def hook(module, args, kwargs, output):
        hidden, index, weights = expert_inputs(module, args, kwargs)
        _, down = site.expert_weights()
        groups = routed_rows(index, site.n_experts)
        for j, idx in by_expert.items():
            rows = groups[j]
            if rows.numel() == 0:
                continue
            act, up = site.activations(hidden[rows], j, idx)
            w = routed_weight(index, weights, rows, j)
            removed = nn.functional.linear(act * up, down[j][:, idx]) * w
            output = output.index_add(0, rows, -removed.to(output.dtype))
        return output

    return hook


def _route_around(site: ExpertSite, banned: torch.Tensor):
    """Re-run the router's top-k choice with ``banned`` experts' logits at -inf: tokens go
    to the best remaining experts; weights renormalised over the top k as the router
    does (always for Mixtral; if ``norm_topk_prob`` for Qwen2-MoE)."""

    def hook(module, _args, output):
        if not (isinstance(output, tuple) and len(output) == 3):
            raise NotImplementedError(
                f"layer {site.layer}: router {type(module).__name__} does not return "
                "(logits, top-k weights, top-k indices); experts cannot be routed around"
            )
        logits, scores, _ = output
        masked = logits.index_fill(-1, banned, float("-inf"))
        probs = torch.softmax(masked.float(), dim=-1)
        top, chosen = torch.topk(probs, site.top_k, dim=-1)
        if getattr(module, "norm_topk_prob", True):
            top = top / top.sum(-1, keepdim=True)
        return masked, top.to(scores.dtype), chosen

    return hook


def _values(
    plan: Sequence[tuple], groups: Mapping[tuple[int, str], list[int]], values, kind: str
) -> list[torch.Tensor | None]:
    """Per plan entry, its units' values in channel order (``mean`` / ``set``), else None."""
    if values is None:
        return [None] * len(plan)
    out = []
    for *_, key in plan:
        if key is None:
            out.append(None)
            continue
        missing = [i for i in groups[key] if (*key, i) not in values]
        if missing:
            raise ValueError(
                f"intervention {kind}: no statistic for layer {key[0]} {key[1]} "
                f"units {missing[:5]} (unit statistics of another model?)"
            )
        vals = [float(values[(*key, i)]) for i in groups[key]]  # float64: no float32 rounding
        out.append(torch.tensor(vals, dtype=torch.float64, device="cpu"))
    return out


@contextlib.contextmanager
def intervened(
    model: nn.Module,
    units: Iterable[Unit],
    intervention: Intervention | str = "zero",
    values: Mapping[Unit, float] | None = None,
    mode: str = "hooks",
    rows: slice | None = None,
) -> Iterator[None]:
    """Apply ``intervention`` to ``(layer, module, index)`` units while the context is active.

    ``rows``: only these rows of the batch (hooks only, dense units only), so that several
    settings can run as one batch.

    ``values``: the per-unit value of ``mean`` and ``set`` (:func:`unit_values`; ``set``
    multiplies it by the factor). ``mode="hooks"``: forward (pre-)hooks edit the units'
    channels (see the module docstring); ``mode="weights"`` (``zero`` only): the
    rows/columns (and biases) are zeroed in place and the saved values written back.
    Either way the model is restored on exit, also after an exception. Units (and their
    values) are validated before anything is changed.
    """
    if isinstance(intervention, str):
        intervention = Intervention(intervention)
    if intervention.kind not in UNIT_INTERVENTIONS:
        raise ValueError(f"intervention {intervention.kind!r} does not act on units (see steered)")
    if mode not in MODES:
        raise ValueError(f"deactivate: mode must be one of {MODES}, got {mode!r}")
    if rows is not None and mode != "hooks":
        raise ValueError("intervention on some batch rows: mode must be hooks")
    if mode == "weights" and intervention.kind != "zero":
        raise ValueError(
            f"intervention {intervention.kind}: only zero can edit weights; use mode hooks"
        )
    if intervention.needs_values and values is None:
        raise ValueError(
            f"intervention {intervention.kind} needs per-unit values (unit statistics)"
        )
    if mode == "weights":
        check_editable(model, "ablation mode weights")
    groups = _group_units(units)
    plan = _plan(model, groups)
    if intervention.kind != "zero" or rows is not None:
        bad = sorted({kind for kind, *_ in plan if kind in ("experts", "route")})
        if bad:
            raise ValueError(
                f"intervention {intervention.kind}: applies to dense units (mlp, q, k, v, o) "
                "only; expert units can only be zeroed"
            )
    per_entry = _values(
        plan, groups, values if intervention.needs_values else None, intervention.kind
    )
    handles: list = []
    saved: list[tuple[torch.Tensor, tuple, torch.Tensor]] = []
    try:
        for kind, site, idx, *_ in plan:  # routing has no weight edit: a hook either way
            if kind == "route":
                handles.append(site.router.register_forward_hook(_route_around(site, idx)))
        if mode == "hooks":
            for (kind, module, idx, _, _), vals in zip(plan, per_entry, strict=True):
                if kind == "pre":
                    edit = _on_rows(_editor(idx, intervention, vals), rows)
                    handles.append(module.register_forward_pre_hook(_input_hook(edit)))
                elif kind == "out":
                    edit = _on_rows(_editor(idx, intervention, vals), rows)
                    handles.append(module.register_forward_hook(_output_hook(edit)))
                elif kind == "experts":
                    hook = _remove_expert_neurons(module, idx)
                    handles.append(module.experts.register_forward_hook(hook, with_kwargs=True))
        else:
            with torch.no_grad():
                targets = [s for _, _, _, slices, _ in plan for s in slices]
                saved = [(t, where, t[where].clone()) for t, where in targets]
                for t, where, _ in saved:
                    t[where] = 0
        yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for t, where, values_ in reversed(saved):
                t[where] = values_


def deactivated(model: nn.Module, neurons: Iterable[Unit], mode: str = "hooks"):
    """Zero ``(layer, module, index)`` units while the context is active (``intervened``
    with ``zero``): hooks, or ``mode="weights"`` for in-place zeroed rows/columns."""
    return intervened(model, neurons, Intervention("zero"), mode=mode)


def dense_only(units: Iterable[Unit], what: str) -> list[Unit]:
    """The dense units (mlp, q, k, v, o) of ``units``; expert units are left out with a
    warning naming ``what`` (scale / mean / set do not apply to them)."""
    units = [as_unit(u) for u in units]
    dense = [u for u in units if u[1] in DENSE_MODULES]
    if len(dense) < len(units):
        log.warning(
            "%s: %d expert units left out (only dense units can be %s; experts only zeroed)",
            what,
            len(units) - len(dense),
            "set, scaled or mean-ablated",
        )
    return dense


def validate_units(model: nn.Module, units: Iterable[Unit]) -> None:
    """Raise, naming the culprit, if any unit does not exist in ``model``."""
    _plan(model, _group_units(units))


def unit_slices(model: nn.Module, units: Iterable[Unit]) -> list[tuple[torch.Tensor, tuple]]:
    """``(parameter, index)`` pairs holding the units' weights: an MLP neuron's rows of
    gate/up (and bias) and column of down, a q/k/v channel's row of its projection (or of
    the fused qkv), an O channel's column of o, an expert neuron's slices of the experts'
    weights (validated; routed experts themselves have no weight slice)."""
    return [s for _, _, _, slices, _ in _plan(model, _group_units(units)) for s in slices]


# ------------------------------------------------------------------ the residual stream


@contextlib.contextmanager
def steered(
    model: nn.Module,
    directions: Mapping[int, torch.Tensor],
    strength: float,
    rows: slice | None = None,
) -> Iterator[None]:
    """Add ``strength * directions[l]`` to the output of decoder layer l (the residual
    stream after layer l) at every position, for each layer l given, while active
    (``rows``: only to these rows of the batch)."""
    layers = decoder_layers(model)
    bad = [la for la in directions if not 0 <= la < len(layers)]
    if bad:
        raise ValueError(f"steer: layers {bad} out of range (model has {len(layers)})")
    handles = []

    def hook(delta: torch.Tensor):
        add = _on_rows(lambda h: h + delta.to(h.dtype), rows)

        def fn(_module, _args, output):
            if isinstance(output, tuple):
                return (add(output[0]), *output[1:])
            return add(output)

        return fn

    try:
        for la, direction in sorted(directions.items()):
            layer = layers[la]
            delta = (direction.double() * float(strength)).to(execution_device(layer))
            handles.append(layer.register_forward_hook(hook(delta)))
        yield
    finally:
        for h in handles:
            h.remove()

"""Ablation of selected neurons and its evaluation by perplexity (docs/methods.md, "Ablation").

A unit is ``(layer, module, index)`` as in the selection tables
(:mod:`workflow_scripts.units`). Deactivating it means (docs/methods.md, "Ablation"):

- ``mlp`` k: zero row k of ``gate/up`` (``W_in`` for plain MLPs) and column k of
  ``down``; with hooks, zero channel k of the down projection's *input* (the
  neuron's whole contribution), which gives the same output exactly;
- ``q``/``k``/``v`` c: zero output channel c of that projection (its weight row and
  bias; in a fused qkv, the channel ``AttentionSite.projection`` maps c to); with hooks,
  zero that channel of the projection's output (before Gemma 3's or OLMo 2's
  ``q_norm``/``k_norm``, exactly like the zeroed row);
- ``o`` c: zero input channel c of ``o_proj`` (its weight column);
- ``mlp.e<j>`` k (neuron k of routed expert j): zero rows k and I + k of expert j's
  ``gate_up_proj`` and column k of its ``down_proj``; with hooks, subtract the neuron's
  contribution from the experts module's output on the tokens routed to j (the experts
  are one module with 3-D weights: no per-expert activation to hook); ``mlp.shared`` k
  as ``mlp`` k of the shared expert;
- ``expert`` j: route around expert j: the router's top-k is taken with j's logit at
  -inf, so tokens go to the best remaining experts. Routing has no weight edit, so this
  is a hook in both modes.

:func:`deactivated` does either (``mode="hooks"`` or ``"weights"``) and restores
the model on exit; perplexity comes from :mod:`workflow_scripts.evaluation.perplexity`.
:func:`ablation_matrix` evaluates every target language's selection, and equal-count
random selections of the same (layer, module) strata, in every evaluation language.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from workflow_scripts.evaluation.perplexity import perplexity
from workflow_scripts.models.anatomy import (
    ExpertSite,
    attention_sites,
    ffn_sites,
    in_slices,
    layer_modules,
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
SETTINGS = ("base", "selected", "random")
MATRIX_COLUMNS = ["setting", "target_lang", "eval_lang", "n_units", "ppl", "base_ppl", "seed"]


# -------------------------------------------------------------------- deactivation


def _unit(u: Sequence) -> Unit:
    layer, module, index = u
    return int(layer), str(module), int(index)


def _group_units(units: Iterable[Unit]) -> dict[tuple[int, str], list[int]]:
    groups: dict[tuple[int, str], set[int]] = {}
    for layer, module, index in map(_unit, units):
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
    """Per (layer, module): (hook kind, hooked module, what to zero, weight slices to zero).

    Kinds: ``pre`` zeroes input channels, ``out`` output channels, ``experts`` removes
    expert neurons' contributions from the experts module's output, ``route`` takes
    experts out of the router's choice.
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
            plan.append(("route", site, idx.to(execution_device(site.router)), []))
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
            plan.append(
                ("pre", site.down, idx, site.neuron_slices(idx) + in_slices(site.down, idx))
            )
            continue
        site = _layer_site(asites, layer)
        _check_range(layer, module, indices, site.size(module))
        if module == "o":
            idx = idx.to(execution_device(site.o))
            plan.append(("pre", site.o, idx, in_slices(site.o, idx)))
        else:  # q/k/v: channels of its own projection, or of the fused qkv
            hooked, channels = site.projection(module)
            idx = channels[idx].to(execution_device(hooked))
            plan.append(("out", hooked, idx, out_slices(hooked, idx)))
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
        plan.append(("experts", site, by_expert, slices))
    return plan


def _zero_input(idx: torch.Tensor):
    def hook(_module, args):
        return (args[0].index_fill(-1, idx, 0), *args[1:])

    return hook


def _zero_output(idx: torch.Tensor):
    def hook(_module, _args, output):
        return output.index_fill(-1, idx, 0)

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


@contextlib.contextmanager
def deactivated(model: nn.Module, neurons: Iterable[Unit], mode: str = "hooks") -> Iterator[None]:
    """Deactivate ``(layer, module, index)`` units of ``model`` while the context is active.

    ``mode="hooks"``: forward (pre-)hooks zero the units' channels (see the module
    docstring); ``mode="weights"``: the rows/columns (and biases) are zeroed in place
    and the saved values written back. Either way the model is restored on exit, also
    after an exception. Units are validated before anything is changed.
    """
    if mode not in MODES:
        raise ValueError(f"deactivate: mode must be one of {MODES}, got {mode!r}")
    if mode == "weights":
        check_editable(model, "ablation mode weights")
    plan = _plan(model, _group_units(neurons))
    handles: list = []
    saved: list[tuple[torch.Tensor, tuple, torch.Tensor]] = []
    try:
        for kind, site, idx, _ in plan:  # routing has no weight edit: a hook either way
            if kind == "route":
                handles.append(site.router.register_forward_hook(_route_around(site, idx)))
        if mode == "hooks":
            for kind, module, idx, _ in plan:
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(_zero_input(idx)))
                elif kind == "out":
                    handles.append(module.register_forward_hook(_zero_output(idx)))
                elif kind == "experts":
                    hook = _remove_expert_neurons(module, idx)
                    handles.append(module.experts.register_forward_hook(hook, with_kwargs=True))
        else:
            with torch.no_grad():
                targets = [s for *_, slices in plan for s in slices]
                saved = [(t, where, t[where].clone()) for t, where in targets]
                for t, where, _ in saved:
                    t[where] = 0
        yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for t, where, values in reversed(saved):
                t[where] = values


# ---------------------------------------------------------------------- unit sets


def units_from_table(table: pa.Table) -> list[Unit]:
    """The selected units ``(layer, module, index)`` of a selection table, in table order."""
    cols = [table[c].to_pylist() for c in ("layer", "module", "index", "selected")]
    return [(int(la), str(m), int(i)) for la, m, i, s in zip(*cols, strict=True) if s]


def all_units(model: nn.Module, modules: Iterable[str] = DENSE_MODULES) -> list[Unit]:
    """Every unit of ``model`` of the given modules (the candidates of random selections).

    ``mlp`` means every MLP neuron: a dense layer's, or in a mixture-of-experts layer
    every expert's (``mlp.e<j>``, ``mlp.shared``); ``mlp.e<j>`` / ``mlp.shared`` name
    one expert's; ``expert`` the routed experts themselves.
    """
    modules = list(dict.fromkeys(modules))
    unknown = unknown_modules(modules)
    if unknown:
        raise ValueError(f"all_units: unknown modules {unknown} (workflow_scripts/units.py)")
    units: list[Unit] = []
    if any(family(m) == "mlp" or m == EXPERT for m in modules):
        sites = ffn_sites(model)
        for site, groups in zip(sites, layer_modules(sites), strict=True):
            for name, width in groups:
                if name in modules or "mlp" in modules:
                    units += [(site.layer, name, i) for i in range(width)]
            if EXPERT in modules and isinstance(site, ExpertSite):
                units += [(site.layer, EXPERT, j) for j in range(site.n_experts)]
    attn = [m for m in modules if m in ATTENTION]
    if attn:
        for s in attention_sites(model):
            units += [(s.layer, m, i) for m in attn for i in range(s.size(m))]
    return units


def random_like(selection: Iterable[Unit], candidates: Iterable[Unit], seed: int) -> list[Unit]:
    """An equal-count random set drawn from the same (layer, module) strata as ``selection``.

    For each (layer, module) of the selection with n distinct units, n units are drawn
    uniformly without replacement from the candidates of that stratum (the selected
    units themselves may be drawn: nothing else is excluded). Strata are visited in
    sorted order and candidates sorted, with one ``numpy.random.default_rng(seed)``,
    so the result depends only on the two sets and the seed. Returned sorted.
    """
    need: dict[tuple[int, str], int] = {}
    for layer, module, _ in set(selection):
        need[(layer, module)] = need.get((layer, module), 0) + 1
    pool: dict[tuple[int, str], set[int]] = {}
    for layer, module, index in candidates:
        pool.setdefault((layer, module), set()).add(index)
    rng = np.random.default_rng(seed)
    out: list[Unit] = []
    for key in sorted(need):
        cands = sorted(pool.get(key, ()))
        if len(cands) < need[key]:
            raise ValueError(
                f"random_like: stratum {key} has {len(cands)} candidates, {need[key]} needed"
            )
        picks = rng.choice(len(cands), size=need[key], replace=False)
        out += [(key[0], key[1], cands[j]) for j in picks]
    return sorted(out)


# ------------------------------------------------------------------ ablation matrix


def ablation_matrix(
    model: nn.Module,
    tokenizer,
    selections: Mapping[str, Sequence[Unit]],
    eval_texts: Mapping[str, Sequence[str]],
    n_random: int = 3,
    seed: int = 0,
    mode: str = "hooks",
    **ppl_kwargs,
) -> pa.Table:
    """Perplexity of every (target language's ablation, evaluation language) pair.

    Rows (columns ``MATRIX_COLUMNS``): per evaluation language one ``base`` row
    (target_lang null, n_units 0); per target language and evaluation language one
    ``selected`` row and ``n_random`` ``random`` rows (seeds ``seed, seed+1, ...``,
    :func:`random_like`); ``seed`` is -1 for non-random rows. The base perplexity is
    computed once per evaluation language. An empty selection gives rows with n_units 0
    and ppl = base_ppl (and a warning). ``ppl_kwargs`` go to :func:`perplexity`.
    """
    empty = [lang for lang, texts in eval_texts.items() if not texts]
    if empty or not eval_texts:
        raise ValueError(f"ablation: evaluation languages without texts: {empty or 'all'}")
    selections = {t: sorted({_unit(u) for u in units}) for t, units in selections.items()}
    for units in selections.values():  # validate every unit before computing anything
        _plan(model, _group_units(units))
    rows: dict[str, list] = {c: [] for c in MATRIX_COLUMNS}

    def add(setting, target, lang, n_units, ppl, base, row_seed=-1) -> None:
        for col, value in zip(
            MATRIX_COLUMNS, (setting, target, lang, n_units, ppl, base, row_seed), strict=True
        ):
            rows[col].append(value)

    base = {}
    for lang, texts in eval_texts.items():
        base[lang] = perplexity(model, tokenizer, texts, **ppl_kwargs).ppl
        add("base", None, lang, 0, base[lang], base[lang])
        log.info("ablation: base PPL %s = %.4g", lang, base[lang])
    used = sorted({m for units in selections.values() for _, m, _ in units})
    candidates = all_units(model, used) if used and n_random > 0 else []
    for target, units in selections.items():
        settings = [("selected", units, -1)]
        settings += [
            ("random", random_like(units, candidates, seed + r) if units else [], seed + r)
            for r in range(n_random)
        ]
        if not units:
            log.warning("ablation: the selection of %r is empty; its rows repeat the base", target)
        for setting, chosen, row_seed in settings:
            if not chosen:
                for lang in eval_texts:
                    add(setting, target, lang, 0, base[lang], base[lang], row_seed)
                continue
            with deactivated(model, chosen, mode=mode):
                for lang, texts in eval_texts.items():
                    ppl = perplexity(model, tokenizer, texts, **ppl_kwargs).ppl
                    add(setting, target, lang, len(chosen), ppl, base[lang], row_seed)
                    log.info(
                        "ablation: %s %s (seed %d) on %s: PPL %.4g (base %.4g)",
                        setting,
                        target,
                        row_seed,
                        lang,
                        ppl,
                        base[lang],
                    )
    return pa.table(
        {
            "setting": pa.array(rows["setting"], pa.string()),
            "target_lang": pa.array(rows["target_lang"], pa.string()),
            "eval_lang": pa.array(rows["eval_lang"], pa.string()),
            "n_units": pa.array(rows["n_units"], pa.int64()),
            "ppl": pa.array(rows["ppl"], pa.float64()),
            "base_ppl": pa.array(rows["base_ppl"], pa.float64()),
            "seed": pa.array(rows["seed"], pa.int64()),
        }
    )

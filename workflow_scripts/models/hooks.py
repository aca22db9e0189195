"""Forward hooks on the stock modules that read the MLP neurons' activations.

Statistics come from hooks, never from edited modeling code; hooks are removed when
their context ends, whatever happens inside.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence

import torch

from workflow_scripts.models.anatomy import ExpertSite, MLPSite


def expert_inputs(experts: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """``(hidden[N, H], top_k_index[N, k], top_k_weights[N, k])`` of an experts call."""
    names = list(inspect.signature(type(experts).forward).parameters)[1:]
    named = dict(zip(names, args, strict=False)) | kwargs
    return named["hidden_states"], named["top_k_index"], named["top_k_weights"]


def routed_rows(top_k_index: torch.Tensor, n_experts: int) -> list[torch.Tensor]:
    """Per expert, the rows (flattened tokens) whose top-k choice includes it, ascending;
    one stable sort and one host sync for all experts."""
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sizes = torch.bincount(flat, minlength=n_experts)[:n_experts].tolist()
    rows = order // top_k_index.shape[-1]
    return list(rows[: sum(sizes)].split(sizes))


def routed_weight(
    index: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, expert: int
) -> torch.Tensor:
    """``[N, 1]``: the routing weight of ``expert`` on each of its ``rows``."""
    return (weights[rows] * (index[rows] == expert)).sum(-1, keepdim=True)


@contextlib.contextmanager
def activation_hooks(
    sites: Sequence[MLPSite | ExpertSite], callback: Callable[..., None]
) -> Iterator[None]:
    """Call ``callback(layer, activation[B, T, I])`` at every forward while active.

    Gated MLPs hook the output of the per-layer ``act_fn`` module (or, if the
    architecture shares one activation module, apply it to ``gate_proj``'s
    output, the gate half of a fused ``gate_up_proj``); plain MLPs hook the input
    of the down projection.

    Mixture-of-experts layers (:class:`ExpertSite`) call
    ``callback(layer, acts[N, I], offset, rows)``: per expert j, its activations on the
    ``rows`` (indices into the block's flattened ``B * T`` tokens) routed to it,
    recomputed from the experts module's inputs (``offset = j * I``, the expert's first
    column in the layer); a shared expert gives ``acts[B * T, I_s]`` with ``rows=None``
    and ``offset = E * I``. Hooks are removed when the context ends, whatever happens
    inside.
    """
    handles = []

    def on_output(layer: int, fn: Callable | None, *extra):
        def hook(_module, _args, output):
            callback(layer, fn(output) if fn is not None else output, *extra)

        return hook

    def on_gate(site: MLPSite, fn: Callable, *extra):
        def hook(_module, _args, output):
            callback(site.layer, fn(site.gate_of(output)), *extra)

        return hook

    def on_input(layer: int, *extra):
        def hook(_module, args):
            callback(layer, args[0], *extra)

        return hook

    def on_experts(site: ExpertSite):
        def hook(module, args, kwargs, _output):
            hidden, index, _ = expert_inputs(module, args, kwargs)
            for j, rows in enumerate(routed_rows(index, site.n_experts)):
                if rows.numel():
                    callback(
                        site.layer, site.gate_activations(hidden[rows], j), j * site.size, rows
                    )

        return hook

    def dense(s: MLPSite, *extra) -> None:
        if not s.gated:
            handles.append(s.down.register_forward_pre_hook(on_input(s.layer, *extra)))
        elif s.act is not None:
            handles.append(s.act.register_forward_hook(on_output(s.layer, None, *extra)))
        else:
            handles.append(s.first.register_forward_hook(on_gate(s, s.mlp.act_fn, *extra)))

    try:
        for s in sites:
            if isinstance(s, ExpertSite):
                hook = on_experts(s)
                handles.append(s.experts.register_forward_hook(hook, with_kwargs=True))
                if s.shared is not None:
                    dense(s.shared, s.n_experts * s.size, None)
            else:
                dense(s)
        yield
    finally:
        for h in handles:
            h.remove()

"""Forward hooks on the stock modules that read the MLP neurons' activations.

Statistics come from hooks, never from edited modeling code; hooks are removed when
their context ends, whatever happens inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from workflow_scripts.models.anatomy import MLPSite


@contextlib.contextmanager
def activation_hooks(
    sites: list[MLPSite], callback: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``callback(layer, activation[B, T, I])`` at every forward while active.

    Gated MLPs hook the output of the per-layer ``act_fn`` module (or, if the
    architecture shares one activation module, apply it to ``gate_proj``'s
    output, the gate half of a fused ``gate_up_proj``); plain MLPs hook the input
    of the down projection. Hooks are
    removed when the context ends, whatever happens inside.
    """
    handles = []

    def on_output(layer: int, fn: Callable | None):
        def hook(_module, _args, output):
            callback(layer, fn(output) if fn is not None else output)

        return hook

    def on_gate(site: MLPSite, fn: Callable):
        def hook(_module, _args, output):
            callback(site.layer, fn(site.gate_of(output)))

        return hook

    def on_input(layer: int):
        def hook(_module, args):
            callback(layer, args[0])

        return hook

    try:
        for s in sites:
            if not s.gated:
                handles.append(s.down.register_forward_pre_hook(on_input(s.layer)))
            elif s.act is not None:
                handles.append(s.act.register_forward_hook(on_output(s.layer, None)))
            else:
                act_fn = s.mlp.act_fn
                handles.append(s.first.register_forward_hook(on_gate(s, act_fn)))
        yield
    finally:
        for h in handles:
            h.remove()

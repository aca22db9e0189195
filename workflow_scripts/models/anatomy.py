"""Locate the MLP neurons of a stock ``transformers`` decoder and hook their activations.

A neuron is one unit k of the MLP intermediate layer (row k of gate/up, column
k of down). Its *activation* is, as in Mu et al. and Tang et al.:

- gated MLPs (Qwen2, Llama, Mistral, Gemma): ``act_fn(gate_proj(x))``, the
  nonlinearity of the gate taken before the product with ``up_proj``;
- plain MLPs (GPT-2 ``c_fc`` + GELU, Bloom ``dense_h_to_4h`` + GELU): the output
  of the nonlinearity, i.e. the input of the down projection.

Statistics come from forward hooks on the stock modules, never from edited
modeling code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

GATE_NAMES = ("gate_proj", "w1")
UP_NAMES = ("up_proj", "w3")
IN_NAMES = ("c_fc", "dense_h_to_4h", "fc1", "fc_in")
DOWN_NAMES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out", "w2")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass
class MLPSite:
    """Where layer ``layer``'s MLP neurons live."""

    layer: int
    mlp: nn.Module
    gated: bool
    down: nn.Module
    first: nn.Module  # gate_proj (gated) or the input projection (plain)
    act: nn.Module | None  # the activation module, if it is a per-layer module
    size: int  # number of neurons (intermediate size)

    def down_weight(self) -> torch.Tensor:
        """Down-projection weight as ``[hidden, intermediate]`` (column k = neuron k)."""
        w = self.down.weight
        # GPT-2's Conv1D stores [in, out]; nn.Linear stores [out, in].
        return w.T if type(self.down).__name__ == "Conv1D" else w


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
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
            if _child(module[0], MLP_NAMES) is None:
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


def _out_features(proj: nn.Module) -> int:
    w = proj.weight
    return w.shape[1] if type(proj).__name__ == "Conv1D" else w.shape[0]


def mlp_sites(model: nn.Module) -> list[MLPSite]:
    """One :class:`MLPSite` per decoder layer, for gated and plain MLPs."""
    layers = decoder_layers(model)
    sites = []
    for i, block in enumerate(layers):
        mlp = _child(block, MLP_NAMES)
        down = _child(mlp, DOWN_NAMES)
        gate = _child(mlp, GATE_NAMES)
        first = gate if gate is not None else _child(mlp, IN_NAMES)
        if down is None or first is None:
            raise ValueError(
                f"layer {i}: unsupported MLP {type(mlp).__name__} "
                f"(children: {[n for n, _ in mlp.named_children()]})"
            )
        act = _child(mlp, ("act_fn", "act", "activation_fn", "gelu_impl"))
        sites.append(MLPSite(i, mlp, gate is not None, down, first, act, _out_features(first)))
    acts = [s.act for s in sites if s.act is not None]
    if len({id(a) for a in acts}) < len(acts):  # one shared module: hooks can't tell layers apart
        for s in sites:
            s.act = None
    return sites


@contextlib.contextmanager
def activation_hooks(
    sites: list[MLPSite], callback: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``callback(layer, activation[B, T, I])`` at every forward while active.

    Gated MLPs hook the output of the per-layer ``act_fn`` module (or, if the
    architecture shares one activation module, apply it to ``gate_proj``'s
    output); plain MLPs hook the input of the down projection. Hooks are
    removed when the context ends, whatever happens inside.
    """
    handles = []

    def on_output(layer: int, fn: Callable | None):
        def hook(_module, _args, output):
            callback(layer, fn(output) if fn is not None else output)

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
                handles.append(s.first.register_forward_hook(on_output(s.layer, act_fn)))
        yield
    finally:
        for h in handles:
            h.remove()

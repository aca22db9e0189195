"""The units every selection table names: ``(layer, module, index)`` (torch-free).

``module`` is one of:

- ``mlp``: a dense MLP's neuron ``index``;
- ``mlp.e{j}``: neuron ``index`` of routed expert ``j`` of a mixture-of-experts layer;
  ``mlp.shared``: neuron ``index`` of its shared expert (Qwen2-MoE);
- ``q``, ``k``, ``v``, ``o``: attention channel ``index`` (PLND);
- ``expert``: routed expert ``index`` itself (the language-specific experts).
"""

from __future__ import annotations

import re

ATTENTION = ("q", "k", "v", "o")
DENSE_MODULES = ("mlp", *ATTENTION)
EXPERT = "expert"
FAMILIES = (*DENSE_MODULES, EXPERT)  # what a module counts as, in display order
_EXPERT_NEURONS = re.compile(r"mlp\.(e(\d+)|shared)")


def family(module: str) -> str:
    """``mlp`` for every MLP neuron (dense, expert or shared), else the module itself;
    ``ValueError`` for a name outside the vocabulary."""
    if module in FAMILIES:
        return module
    if _EXPERT_NEURONS.fullmatch(module):
        return "mlp"
    raise ValueError(
        f"unknown module {module!r}: expected one of {FAMILIES}, mlp.e<j> or mlp.shared"
    )


def expert_of(module: str) -> int | None:
    """``j`` of an expert's neuron module ``mlp.e{j}`` (None for any other module)."""
    match = _EXPERT_NEURONS.fullmatch(module)
    return int(match.group(2)) if match and match.group(2) is not None else None


def unknown_modules(modules) -> list[str]:
    """The names in ``modules`` outside the vocabulary, sorted."""
    bad = []
    for m in modules:
        try:
            family(str(m))
        except ValueError:
            bad.append(str(m))
    return sorted(bad)

"""Zhao et al.'s layer-stage x structure cells (docs/methods.md, "Task evaluation").

The first N1 layers are "understanding", the last N2 "generation", the middle
"task-solving" (``plnd.stages``, default :func:`default_stages`). A cell keeps the units
of a selection that lie in its layers and structures:

- ``understanding``, ``generation``: every unit (FFN and attention) of those layers;
- ``task_attention`` / ``task_ffn``: the task-solving layers' attention (q, k, v, o) /
  MLP units;
- ``all``: every unit (the whole selection).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from workflow_scripts.neurons.summary import check_stages, default_stages
from workflow_scripts.units import ATTENTION, family

CELLS = ("understanding", "task_attention", "task_ffn", "generation", "all")
Unit = tuple[int, str, int]


def stage_bounds(n_layers: int, stages: Sequence[int] | None = None) -> tuple[int, int]:
    """``(first task-solving layer, first generation layer)``."""
    n1, n2 = check_stages(tuple(stages) if stages else default_stages(n_layers), n_layers)
    return n1, n_layers - n2


def cell_units(
    units: Iterable[Unit], cell: str, n_layers: int, stages: Sequence[int] | None = None
) -> list[Unit]:
    """The units of ``units`` in ``cell`` (sorted)."""
    if cell not in CELLS:
        raise ValueError(f"unknown layer-stage cell {cell!r}: use one of {CELLS}")
    start, end = stage_bounds(n_layers, stages)

    def keep(layer: int, module: str) -> bool:
        attention = module in ATTENTION
        if cell == "understanding":
            return layer < start
        if cell == "generation":
            return layer >= end
        if cell == "all":
            return True
        middle = start <= layer < end
        return middle and (attention if cell == "task_attention" else family(module) == "mlp")

    return sorted(u for u in units if keep(u[0], u[1]))

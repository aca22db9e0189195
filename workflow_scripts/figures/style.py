"""What every figure shares: how a condition is named, how a figure is written."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from workflow_scripts.io import atomic_path
from workflow_scripts.languages import ISO_639_1

PARALLEL = "parallel"


def condition_label(condition: str) -> str:
    """``'fr'`` -> ``'fr (French)'``; ``'parallel'`` -> ``'parallel (multilingual)'``."""
    if condition == PARALLEL:
        return "parallel (multilingual)"
    return f"{condition} ({ISO_639_1.get(condition, condition).replace('_', ' ')})"


def save(fig, out: str | Path) -> None:
    """Write ``fig`` as a PNG atomically (nothing half-written looks finished) and close it."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    plt.close(fig)

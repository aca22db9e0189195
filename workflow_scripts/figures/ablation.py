"""Figure of the neuron-ablation matrices: target language x evaluation language."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workflow_scripts.figures.style import save
from workflow_scripts.io import read_parquet


def change_matrix(table: pa.Table, setting: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(targets, evals, log2(ppl / base_ppl))``, random draws averaged in log space.

    Evaluation languages keep the table's order, so with targets in the same order
    the own-language cells lie on the diagonal.
    """
    rows = table.filter(pc.equal(table["setting"], setting)).to_pylist()
    evals = list(dict.fromkeys(table["eval_lang"].to_pylist()))  # base rows: config order
    targets = list(dict.fromkeys(r["target_lang"] for r in rows))
    sums = np.zeros((len(targets), len(evals)))
    counts = np.zeros_like(sums)
    for r in rows:
        i, j = targets.index(r["target_lang"]), evals.index(r["eval_lang"])
        sums[i, j] += np.log2(r["ppl"] / r["base_ppl"])
        counts[i, j] += 1
    with np.errstate(invalid="ignore"):
        return targets, evals, sums / counts


def plot_ablation(tables: Mapping[str, str | Path], model: str, out: str | Path) -> None:
    """Per method: PPL change of each evaluation language when a target language's
    selected neurons are deactivated, next to an equal-count random selection."""
    loaded = {m: read_parquet(p) for m, p in tables.items()}
    mats = {m: {s: change_matrix(t, s) for s in ("selected", "random")} for m, t in loaded.items()}
    fig, axes = plt.subplots(
        len(mats), 2, figsize=(12, 5 * len(mats)), squeeze=False, constrained_layout=True
    )
    for row, (method, by_setting) in enumerate(mats.items()):
        # one colour scale per method (a method can move PPL by orders of magnitude more)
        finite = [v[np.isfinite(v)] for (_, _, v) in by_setting.values()]
        finite = np.concatenate(finite) if finite else np.zeros(0)
        lim = max(0.05, float(np.abs(finite).max())) if finite.size else 1.0
        n_units = {
            r["target_lang"]: r["n_units"]
            for r in loaded[method]
            .filter(pc.equal(loaded[method]["setting"], "selected"))
            .to_pylist()
        }
        for col, setting in enumerate(("selected", "random")):
            ax = axes[row, col]
            targets, evals, m = by_setting[setting]
            image = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    if np.isfinite(m[i, j]):
                        pct = 100 * (2 ** m[i, j] - 1)
                        weight = "bold" if targets[i] == evals[j] else "normal"
                        ax.text(
                            j,
                            i,
                            f"{pct:+.0f}%",
                            ha="center",
                            va="center",
                            fontsize=7,
                            fontweight=weight,
                        )
            ax.set_xticks(range(len(evals)), evals)
            ax.set_yticks(range(len(targets)), [f"{t} ({n_units.get(t, 0)})" for t in targets])
            ax.set_xlabel("evaluated language")
            ax.set_ylabel("deactivated: language (neurons)")
            what = "its selected neurons" if setting == "selected" else "equal-count random neurons"
            ax.set_title(f"{method}: {what}", fontsize=11)
        fig.colorbar(image, ax=axes[row], shrink=0.9, label="log2(PPL / base PPL)")
    fig.suptitle(
        f"{model}: perplexity change when a language's neurons are deactivated\n"
        "(cell text: PPL change in %; bold: own language; one colour scale per method)",
        fontsize=13,
    )
    save(fig, out)

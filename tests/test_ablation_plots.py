"""The ablation figure and its matrix."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from workflow_scripts.figures.ablation import change_matrix, plot_ablation
from workflow_scripts.io import write_parquet

LANGS = ["fr", "en", "zh"]


def _table(factor: float) -> pa.Table:
    rows = []
    for e in LANGS:
        rows.append(("base", None, e, 0, 10.0, 10.0, -1))
    for t in LANGS:
        for e in LANGS:
            rows.append(("selected", t, e, 5, 10.0 * (factor if t == e else 1.1), 10.0, -1))
            for seed in (0, 1):
                rows.append(("random", t, e, 5, 10.0 * (1.0 + 0.01 * (seed + 1)), 10.0, seed))
    cols = ["setting", "target_lang", "eval_lang", "n_units", "ppl", "base_ppl", "seed"]
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})


def test_change_matrix_keeps_order_and_averages_random_in_log_space():
    targets, evals, m = change_matrix(_table(4.0), "selected")
    assert targets == LANGS and evals == LANGS  # own language on the diagonal
    assert np.allclose(np.diag(m), 2.0)  # log2(4)
    assert m[0, 1] == pytest.approx(np.log2(1.1))
    _, _, r = change_matrix(_table(4.0), "random")
    assert r[0, 0] == pytest.approx((np.log2(1.01) + np.log2(1.02)) / 2)


def test_plot_ablation_writes_a_png(tmp_path):
    paths = {}
    for method, factor in (("plnd", 8.0), ("lape", 1.5)):
        paths[method] = tmp_path / f"{method}.parquet"
        write_parquet(_table(factor), paths[method])
    out = tmp_path / "ablation.png"
    plot_ablation(paths, "tiny", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

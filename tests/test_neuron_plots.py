"""Neuron-selection tables and figures on small synthetic selection / logit-lens tables."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import pyarrow as pa
import pytest

from workflow_scripts.figures.neurons import (
    plot_layers,
    plot_logit_lens,
    plot_neuron_figures,
    plot_overlap,
)
from workflow_scripts.io import write_parquet
from workflow_scripts.neurons.summary import (
    default_stages,
    jaccard_tables,
    load_selection,
    selection_counts,
    write_tables,
)
from workflow_scripts.units import DENSE_MODULES as MODULES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LANGS = ["en", "fr", "zh"]
N_LAYERS = 6
SIZES = {"mlp": 16, "q": 8, "k": 4, "v": 4, "o": 8}
METHOD_MODULES = {"plnd": MODULES, "lape": ("mlp",), "actcount": ("mlp",)}


def write_selection(path: Path, rows: list[tuple[int, str, int, bool]]) -> Path:
    """A selection table (with an extra column that must be ignored)."""
    write_parquet(
        pa.table(
            {
                "layer": pa.array([r[0] for r in rows], pa.int32()),
                "module": pa.array([r[1] for r in rows], pa.string()),
                "index": pa.array([r[2] for r in rows], pa.int32()),
                "score": pa.array([float(i) for i in range(len(rows))], pa.float64()),
                "selected": pa.array([r[3] for r in rows], pa.bool_()),
                "extra": pa.array(["x"] * len(rows), pa.string()),
            }
        ),
        path,
    )
    return path


def random_rows(modules, seed: int, p: float, n_layers: int = N_LAYERS):
    rng = random.Random(seed)
    return [
        (layer, module, index, rng.random() < p)
        for layer in range(n_layers)
        for module in modules
        for index in range(SIZES[module])
    ]


@pytest.fixture
def synthetic(tmp_path):
    """tables[method][lang] -> path, and the rows written."""
    tables, written = {}, {}
    for m, (method, modules) in enumerate(METHOD_MODULES.items()):
        for k, lang in enumerate(LANGS):
            rows = random_rows(modules, seed=10 * m + k, p=0.1 if lang == "en" else 0.3)
            path = write_selection(tmp_path / "neurons" / method / f"{lang}.parquet", rows)
            tables.setdefault(method, {})[lang] = str(path)
            written.setdefault(method, {})[lang] = rows
    return tables, written


def write_logit_lens(path: Path, lang: str, n_layers: int = N_LAYERS) -> Path:
    cols = {"layer": [], "lang_of_token": [], "ratio": [], "n_tokens": []}
    for layer in range(n_layers):
        t = layer / max(n_layers - 1, 1)
        en = math.sin(math.pi * t) * 0.6 + 0.1
        shares = (
            {"en": en, "other": 1 - en}
            if lang == "en"
            else {"en": en, lang: t * (1 - en), "other": (1 - t) * (1 - en)}
        )
        for tok_lang, ratio in shares.items():
            cols["layer"].append(layer)
            cols["lang_of_token"].append(tok_lang)
            cols["ratio"].append(ratio)
            cols["n_tokens"].append(500)
    write_parquet(
        pa.table(
            {
                "layer": pa.array(cols["layer"], pa.int32()),
                "lang_of_token": pa.array(cols["lang_of_token"], pa.string()),
                "ratio": pa.array(cols["ratio"], pa.float64()),
                "n_tokens": pa.array(cols["n_tokens"], pa.int64()),
            }
        ),
        path,
    )
    return path


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- tables


def test_load_selection_keeps_only_selected(tmp_path):
    path = write_selection(
        tmp_path / "s.parquet", [(0, "mlp", 3, True), (1, "q", 2, False), (2, "o", 1, True)]
    )
    assert load_selection(path) == {(0, "mlp", 3), (2, "o", 1)}


def test_load_selection_rejects_unknown_module(tmp_path):
    path = write_selection(tmp_path / "s.parquet", [(0, "attn", 3, True)])
    with pytest.raises(ValueError, match="unknown module"):
        load_selection(path)


def test_selection_counts_equal_direct_computation(synthetic):
    tables, written = synthetic
    counts = selection_counts(tables)
    assert counts.column_names == ["method", "lang", "layer", "module", "n_selected"]
    assert counts.schema.field("layer").type == pa.int32()
    got = {
        (r["method"], r["lang"], r["layer"], r["module"]): r["n_selected"]
        for r in counts.to_pylist()
    }
    expected = {}
    for method, modules in METHOD_MODULES.items():
        for lang in LANGS:
            for layer in range(N_LAYERS):
                for module in modules:
                    expected[(method, lang, layer, module)] = sum(
                        sel and la == layer and mod == module
                        for la, mod, _, sel in written[method][lang]
                    )
    assert got == expected  # every layer and module present, zeros included
    assert counts.num_rows == len(expected)


def test_selection_counts_zeros_and_n_layers(tmp_path):
    # only layer 1 selected; layer 3 scored but not selected -> L = 4 inferred
    path = write_selection(tmp_path / "a.parquet", [(1, "mlp", 0, True), (3, "mlp", 0, False)])
    counts = selection_counts({"lape": {"fr": path}})
    assert counts["layer"].to_pylist() == [0, 1, 2, 3]
    assert counts["n_selected"].to_pylist() == [0, 1, 0, 0]
    counts = selection_counts({"lape": {"fr": path}}, n_layers=6)
    assert counts["n_selected"].to_pylist() == [0, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="n_layers"):
        selection_counts({"lape": {"fr": path}}, n_layers=3)


@pytest.fixture
def hand_tables(tmp_path):
    """Small hand-made selections (unselected rows included, which must be ignored)."""
    d = tmp_path / "hand"
    sel = {
        "plnd": {
            "en": [
                (0, "mlp", 1, True),
                (0, "mlp", 2, True),
                (1, "q", 3, True),
                (5, "mlp", 9, False),
            ],
            "fr": [(0, "mlp", 2, True), (2, "mlp", 5, True), (1, "q", 3, False)],
            "zh": [(0, "mlp", 1, False)],
        },
        "lape": {
            "en": [(0, "mlp", 1, True), (0, "mlp", 2, True), (4, "mlp", 0, False)],
            "fr": [(3, "mlp", 0, True)],
            "zh": [(0, "mlp", 1, False)],
        },
    }
    return {
        m: {
            lang: str(write_selection(d / m / f"{lang}.parquet", rows)) for lang, rows in by.items()
        }
        for m, by in sel.items()
    }


def test_jaccard_hand_checked(hand_tables):
    table = jaccard_tables(hand_tables)
    rows = table.to_pylist()
    lang = {(r["method"], r["a"], r["b"]): r for r in rows if r["kind"] == "language"}
    meth = {(r["lang"], r["a"], r["b"]): r for r in rows if r["kind"] == "method"}
    # every method: 3 languages -> 6 pairs a <= b (diagonal included); 1 method pair x 3 languages
    assert len(lang) == 12 and len(meth) == 3
    assert all(r["lang"] is None for r in lang.values())
    assert all(r["method"] is None for r in meth.values())

    r = lang[("plnd", "en", "fr")]  # {mlp1, mlp2, q3} vs {mlp2, mlp5}: 1 shared of 4
    assert (r["jaccard"], r["n_a"], r["n_b"], r["n_both"]) == (0.25, 3, 2, 1)
    assert r["modules"] == "mlp+q"
    assert lang[("plnd", "en", "en")]["jaccard"] == 1.0
    assert lang[("plnd", "en", "zh")]["jaccard"] == 0.0
    assert math.isnan(lang[("plnd", "zh", "zh")]["jaccard"])  # empty vs empty
    assert lang[("plnd", "zh", "zh")]["n_both"] == 0
    assert lang[("lape", "en", "fr")]["jaccard"] == 0.0
    assert lang[("lape", "en", "fr")]["modules"] == "mlp"

    # methods compared on MLP neurons only: plnd en {mlp1, mlp2} (q3 dropped) == lape en
    r = meth[("en", "plnd", "lape")]
    assert (r["jaccard"], r["n_a"], r["n_b"], r["n_both"], r["modules"]) == (1.0, 2, 2, 2, "mlp")
    r = meth[("fr", "plnd", "lape")]  # {mlp2, mlp5} vs {mlp(3,0)}
    assert (r["jaccard"], r["n_a"], r["n_b"], r["n_both"]) == (0.0, 2, 1, 0)
    assert math.isnan(meth[("zh", "plnd", "lape")]["jaccard"])


def test_jaccard_method_pairs_only_where_both_have_language(tmp_path):
    a = write_selection(tmp_path / "a.parquet", [(0, "mlp", 0, True)])
    tables = {"plnd": {"en": a, "fr": a}, "lape": {"fr": a}}
    rows = jaccard_tables(tables).to_pylist()
    assert [(r["lang"], r["a"], r["b"]) for r in rows if r["kind"] == "method"] == [
        ("fr", "plnd", "lape")
    ]


def test_write_tables_csv(hand_tables, tmp_path):
    counts = selection_counts(hand_tables)
    jac = jaccard_tables(hand_tables)
    write_tables(counts, jac, tmp_path / "out" / "counts.csv", tmp_path / "out" / "jaccard.csv")
    with open(tmp_path / "out" / "counts.csv") as f:
        c = list(csv.DictReader(f))
    with open(tmp_path / "out" / "jaccard.csv") as f:
        j = list(csv.DictReader(f))
    assert len(c) == counts.num_rows and sum(int(r["n_selected"]) for r in c) == 3 + 2 + 2 + 1
    assert len(j) == jac.num_rows
    nan_row = next(
        r
        for r in j
        if r["kind"] == "language" and r["method"] == "plnd" and r["a"] == r["b"] == "zh"
    )
    assert math.isnan(float(nan_row["jaccard"]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["counts.csv", "jaccard.csv"]


# ---------------------------------------------------------------- stages


def test_default_stages():
    assert default_stages(32) == (8, 4)
    n1, n2 = default_stages(18)
    assert n1 in (4, 5) and n2 == 2
    n1, n2 = default_stages(2)
    assert n1 >= 0 and n2 >= 0 and n1 + n2 < 2
    assert default_stages(1) == (0, 0)
    for n in range(3, 129):
        n1, n2 = default_stages(n)
        assert n1 >= 1 and n2 >= 1 and n1 + n2 < n, n
    with pytest.raises(ValueError):
        default_stages(0)


# ---------------------------------------------------------------- figures


def test_plot_layers_png(synthetic, tmp_path):
    tables, _ = synthetic
    out = tmp_path / "fig" / "layers_tiny.png"
    plot_layers(selection_counts(tables), "tiny", N_LAYERS, default_stages(N_LAYERS), out)
    assert_png(out)


def test_plot_layers_rejects_bad_stages(synthetic, tmp_path):
    tables, _ = synthetic
    with pytest.raises(ValueError, match="stages"):
        plot_layers(selection_counts(tables), "tiny", N_LAYERS, (4, 3), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_overlap_png(synthetic, tmp_path):
    tables, _ = synthetic
    out = tmp_path / "fig" / "overlap_tiny.png"
    plot_overlap(jaccard_tables(tables), "tiny", out)
    assert_png(out)


def test_plot_logit_lens_png(tmp_path):
    tables = {lang: write_logit_lens(tmp_path / "ll" / f"{lang}.parquet", lang) for lang in LANGS}
    for final_norm in (False, True):
        out = tmp_path / "fig" / f"logit_lens_{final_norm}.png"
        plot_logit_lens(
            tables, "tiny", out, final_norm=final_norm, stages=(1, 1) if final_norm else None
        )
        assert_png(out)


@pytest.mark.parametrize("zero_rows", [False, True])
def test_figures_with_empty_selection(tmp_path, zero_rows):
    """Nothing selected (or empty tables): every figure and table is still written."""
    tables = {}
    for method, modules in METHOD_MODULES.items():
        for lang in LANGS:
            rows = (
                []
                if zero_rows
                else [(la, m, i, False) for la, m, i, _ in random_rows(modules, 0, 0)]
            )
            tables.setdefault(method, {})[lang] = write_selection(
                tmp_path / method / f"{lang}.parquet", rows
            )
    empty_ll = tmp_path / "ll" / "fr.parquet"
    write_parquet(
        pa.table(
            {
                "layer": pa.array([], pa.int32()),
                "lang_of_token": pa.array([], pa.string()),
                "ratio": pa.array([], pa.float64()),
                "n_tokens": pa.array([], pa.int64()),
            }
        ),
        empty_ll,
    )
    fig = tmp_path / "fig"
    plot_neuron_figures(
        tables,
        {"fr": empty_ll},
        "tiny",
        fig / "layers_tiny.png",
        fig / "overlap_tiny.png",
        fig / "logit_lens_tiny.png",
        fig / "counts.csv",
        fig / "jaccard.csv",
        final_norm=False,
        n_layers=N_LAYERS,
    )
    for name in ("layers_tiny.png", "overlap_tiny.png", "logit_lens_tiny.png"):
        assert_png(fig / name)
    counts = selection_counts(tables, N_LAYERS)
    assert sum(counts["n_selected"].to_pylist()) == 0
    jac = jaccard_tables(tables)
    assert all(math.isnan(v) for v in jac["jaccard"].to_pylist())


def test_plots_with_no_inputs(tmp_path):
    plot_layers(selection_counts({}, n_layers=4), "tiny", 4, (1, 1), tmp_path / "l.png")
    plot_overlap(jaccard_tables({}), "tiny", tmp_path / "o.png")
    plot_logit_lens({}, "tiny", tmp_path / "ll.png", final_norm=True)
    for name in ("l.png", "o.png", "ll.png"):
        assert_png(tmp_path / name)

"""Summaries of the language-specific selections: neurons per layer and module, overlaps
(Jaccard) across languages and methods, and the layer stages of Zhao et al. 2024.

Read by the figures and by the findings table; torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from workflow_scripts.io import atomic_path, read_parquet
from workflow_scripts.units import FAMILIES, family, unknown_modules

JACCARD_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("method", pa.string()),
        ("lang", pa.string()),
        ("a", pa.string()),
        ("b", pa.string()),
        ("modules", pa.string()),
        ("jaccard", pa.float64()),
        ("n_a", pa.int64()),
        ("n_b", pa.int64()),
        ("n_both", pa.int64()),
    ]
)

SELECTION_COLUMNS = ["layer", "module", "index", "selected"]


Neuron = tuple[int, str, int]


def _read_selection(path: str | Path) -> pa.Table:
    """The selection table's ``layer, module, index, selected`` columns, checked."""
    table = read_parquet(path, SELECTION_COLUMNS)
    modules = set(pc.unique(table["module"]).to_pylist())
    unknown = unknown_modules(modules)
    if unknown:
        raise ValueError(f"{path}: unknown module(s) {unknown} (workflow_scripts/units.py)")
    if table.num_rows and pc.min(table["layer"]).as_py() < 0:
        raise ValueError(f"{path}: negative layer index")
    return table


def _selected(table: pa.Table) -> set[Neuron]:
    kept = table.filter(table["selected"].fill_null(False))  # filter first: tables can be large
    cols = [kept[c].to_pylist() for c in ("layer", "module", "index")]
    return {(int(la), str(m), int(i)) for la, m, i in zip(*cols, strict=True)}


def load_selection(path: str | Path) -> set[Neuron]:
    """The selected neurons ``(layer, module, index)`` of one selection table."""
    return _selected(_read_selection(path))


def ordered_modules(modules: set[str]) -> list[str]:
    """The module families present in ``modules`` (an expert's neurons count as ``mlp``)."""
    present = {family(m) for m in modules}
    return [m for m in FAMILIES if m in present]


def selection_counts(
    tables: Mapping[str, Mapping[str, str | Path]], n_layers: int | None = None
) -> pa.Table:
    """Selected neurons per (method, lang, layer, module family), zeros included
    (an expert's neurons count under ``mlp``).

    ``tables[method][lang]`` is a selection table's path. Every layer ``0..L-1`` is
    present for every module the method scores (the modules found in any of its
    files; ``mlp`` if they are all empty). ``L`` is ``n_layers`` or else one more
    than the largest layer in any file (scored rows, selected or not).
    Columns: ``method, lang, layer, module, n_selected``.
    """
    read = {
        m: {lang: _read_selection(p) for lang, p in langs.items()} for m, langs in tables.items()
    }
    max_layer = max(
        (
            pc.max(t["layer"]).as_py()
            for langs in read.values()
            for t in langs.values()
            if t.num_rows
        ),
        default=-1,
    )
    if n_layers is None:
        n_layers = max_layer + 1
    elif max_layer >= n_layers:
        raise ValueError(f"selection tables contain layer {max_layer} but n_layers is {n_layers}")
    rows: dict[str, list] = {c: [] for c in ("method", "lang", "layer", "module", "n_selected")}
    for method, langs in read.items():
        found = set().union(*(set(pc.unique(t["module"]).to_pylist()) for t in langs.values()))
        modules = ordered_modules(found) or ["mlp"]
        for lang, table in langs.items():
            counts = {m: np.zeros(n_layers, dtype=np.int64) for m in modules}
            for layer, module, _ in _selected(table):
                counts[family(module)][layer] += 1
            for layer in range(n_layers):
                for module in modules:
                    rows["method"].append(method)
                    rows["lang"].append(lang)
                    rows["layer"].append(layer)
                    rows["module"].append(module)
                    rows["n_selected"].append(int(counts[module][layer]))
    schema = pa.schema(
        [
            ("method", pa.string()),
            ("lang", pa.string()),
            ("layer", pa.int32()),
            ("module", pa.string()),
            ("n_selected", pa.int64()),
        ]
    )
    return pa.table(rows, schema=schema)


def jaccard(a: set, b: set) -> float:
    """``|a & b| / |a | b|``; NaN when both sets are empty."""
    union = len(a | b)
    return len(a & b) / union if union else math.nan


def jaccard_tables(tables: Mapping[str, Mapping[str, str | Path]]) -> pa.Table:
    """Jaccard overlap of the selected sets, across languages and across methods.

    ``kind == "language"``: per method, every language pair ``a <= b`` (in the
    order given, diagonal included) over all modules the method scores; ``lang`` is
    null. ``kind == "method"``: per language, every method pair ``a < b`` that both
    have the language, comparing only ``module == "mlp"`` neurons (actcount and lape
    select no attention neurons); ``method`` is null. ``modules`` names the modules
    compared (``"mlp+q+k+v+o"``, ``"mlp"``). Empty vs empty is NaN.
    """
    read = {
        m: {lang: _read_selection(p) for lang, p in langs.items()} for m, langs in tables.items()
    }
    sets = {m: {lang: _selected(t) for lang, t in langs.items()} for m, langs in read.items()}
    rows: dict[str, list] = {name: [] for name in JACCARD_SCHEMA.names}

    def add(kind, method, lang, a, b, modules, set_a, set_b):
        values = (kind, method, lang, a, b, modules, jaccard(set_a, set_b))
        for name, value in zip(JACCARD_SCHEMA.names, values, strict=False):
            rows[name].append(value)
        rows["n_a"].append(len(set_a))
        rows["n_b"].append(len(set_b))
        rows["n_both"].append(len(set_a & set_b))

    for method, by_lang in sets.items():
        found = set().union(
            *(set(pc.unique(t["module"]).to_pylist()) for t in read[method].values())
        )
        modules = "+".join(ordered_modules(found) or ["mlp"])
        langs = list(by_lang)
        for i, a in enumerate(langs):
            for b in langs[i:]:
                add("language", method, None, a, b, modules, by_lang[a], by_lang[b])
    languages = list(dict.fromkeys(lang for by_lang in sets.values() for lang in by_lang))
    for lang in languages:
        methods = [m for m in sets if lang in sets[m]]
        mlp = {m: {n for n in sets[m][lang] if family(n[1]) == "mlp"} for m in methods}
        for a, b in combinations(methods, 2):
            add("method", None, lang, a, b, "mlp", mlp[a], mlp[b])
    return pa.table(rows, schema=JACCARD_SCHEMA)


def write_tables(
    counts_table: pa.Table,
    jaccard_table: pa.Table,
    counts_csv: str | Path,
    jaccard_csv: str | Path,
) -> None:
    """Write both tables as CSV, each atomically (no half-written file on failure)."""
    for table, out in ((counts_table, counts_csv), (jaccard_table, jaccard_csv)):
        with atomic_path(out) as tmp:
            pacsv.write_csv(table, tmp)


def default_stages(n_layers: int) -> tuple[int, int]:
    """``(N1, N2)``: the first N1 layers "understanding", the last N2 "generation".

    Zhao et al. use 8 and 4 of 32 layers; scaled here to ``n/4`` and ``n/8``
    (rounded half up), at least 1 each, keeping ``N1 + N2 < n_layers`` so that a
    task-solving stage remains. Below 3 layers not every stage fits: the generation
    stage is dropped first (2 layers -> ``(1, 0)``, 1 layer -> ``(0, 0)``).
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    n1 = max(1, math.floor(n_layers / 4 + 0.5))
    n2 = max(1, math.floor(n_layers / 8 + 0.5))
    while n1 + n2 >= n_layers and max(n1, n2) > 1:
        if n1 >= n2:
            n1 -= 1
        else:
            n2 -= 1
    if n1 + n2 >= n_layers:
        n2 = 0
    if n1 + n2 >= n_layers:
        n1 = 0
    return n1, n2


def check_stages(stages: tuple[int, int], n_layers: int) -> tuple[int, int]:
    n1, n2 = (int(s) for s in stages)
    if n1 < 0 or n2 < 0 or n1 + n2 > n_layers:
        raise ValueError(
            f"stages {stages} do not fit {n_layers} layers (need N1, N2 >= 0, N1 + N2 <= n)"
        )
    return n1, n2

"""Linguistic regions from per-language scores, Zhang et al. 2024 (docs/methods.md, "Regions").

:func:`select_regions` sums the scores over the region languages, ranks each parameter
tensor separately and keeps a ``k`` fraction: ``top``, ``bottom``, an equal-size seeded
``random``, ``core`` (the important end: ``bottom`` for delta, ``top`` for grad_x_param)
and ``monolingual_L`` (elements in L's own important end and in no other region
language's). Tables have the columns ``REGION_COLUMNS``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors import safe_open
from torch import nn

from workflow_scripts.models.anatomy import (
    common_layers_prefix,
    param_kind,
    param_layer,
    param_module,
)
from workflow_scripts.regions.scores import IMPORTANT_END, SCORES, read_score_names

KINDS = ("matrix", "norm", "bias")
REGION_COLUMNS = ("param", "flat_index", "layer", "kind")


# ------------------------------------------------------------------ parameters


# ------------------------------------------------------------------- documents


# --------------------------------------------------------------------- scores


# -------------------------------------------------------------------- regions


def region_size(numel: int, k: float) -> int:
    """Elements kept of a tensor of ``numel``: ``round(k * numel)``, at least 1."""
    return max(1, round(k * numel))


def _ends(score: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ``n`` largest and ``n`` smallest (stable: ties by index)."""
    order = np.argsort(score, kind="stable")
    return np.sort(order[-n:]), np.sort(order[:n])


def _random_indices(name: str, numel: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(numel, size=n, replace=False))


def check_k(k: float) -> float:
    if not 0 < k <= 0.5:
        raise ValueError(f"regions: k must be in (0, 0.5], got {k}")
    return k


def select_regions(
    score_files: Mapping[str, str | Path],
    score: str,
    k: float,
    seed: int = 0,
    layers_prefix: str | None = None,
) -> dict[str, pa.Table]:
    """Region tables (columns ``REGION_COLUMNS``) from per-language score files.

    ``score_files``: region language -> safetensors of :func:`write_scores`. Each
    tensor is ranked separately by the sum of the languages' scores. Returns
    ``top``, ``bottom``, ``random``, ``core`` and ``monolingual_{lang}`` tables.
    Tensors are read one at a time (memory: one tensor per language).
    """
    if score not in SCORES:
        raise ValueError(f"regions: score must be one of {SCORES}, got {score!r}")
    check_k(k)
    if not score_files:
        raise ValueError("regions: no region language")
    langs = sorted(score_files)
    names = {lang: read_score_names(score_files[lang]) for lang in langs}
    first = names[langs[0]]
    for lang in langs[1:]:
        if names[lang] != first:
            raise ValueError(
                f"regions: {score_files[lang]} holds other tensors than {score_files[langs[0]]}"
            )
    prefix = layers_prefix or common_layers_prefix(first)
    end = IMPORTANT_END[score]
    parts: dict[str, list[tuple[str, np.ndarray]]] = {}

    def keep(region: str, name: str, idx: np.ndarray) -> None:
        parts.setdefault(region, []).append((name, idx))

    handles = [safe_open(str(score_files[lang]), framework="numpy") for lang in langs]
    for name in first:
        per_lang = [h.get_tensor(name).reshape(-1).astype(np.float64) for h in handles]
        total = np.sum(per_lang, axis=0)
        n = region_size(total.size, k)
        top, bottom = _ends(total, n)
        keep("top", name, top)
        keep("bottom", name, bottom)
        keep("random", name, _random_indices(name, total.size, n, seed))
        keep("core", name, top if end == "top" else bottom)
        own = [_ends(s, n)[0 if end == "top" else 1] for s in per_lang]
        for i, lang in enumerate(langs):
            others = [own[j] for j in range(len(langs)) if j != i]
            mono = np.setdiff1d(own[i], np.concatenate(others)) if others else own[i]
            keep(f"monolingual_{lang}", name, mono)
    shapes = {name: handles[0].get_slice(name).get_shape() for name in first}
    regions = ["top", "bottom", "random", "core"] + [f"monolingual_{lang}" for lang in langs]
    return {r: _region_table(parts[r], shapes, prefix) for r in regions}


def _region_table(
    parts: Sequence[tuple[str, np.ndarray]], shapes: Mapping[str, Sequence[int]], prefix: str
) -> pa.Table:
    names, idx, layers, kinds = [], [], [], []
    for name, flat in parts:
        names.append(np.full(flat.size, name, dtype=object))
        idx.append(flat.astype(np.int64))
        layers.append(np.full(flat.size, param_layer(name, prefix), dtype=np.int32))
        kinds.append(np.full(flat.size, param_kind(name, len(shapes[name])), dtype=object))

    def cat(xs, dtype):
        return np.concatenate(xs) if xs else np.array([], dtype=dtype)

    return pa.table(
        {
            "param": pa.array(cat(names, object), pa.string()).dictionary_encode(),
            "flat_index": pa.array(cat(idx, np.int64), pa.int64()),
            "layer": pa.array(cat(layers, np.int32), pa.int32()),
            "kind": pa.array(cat(kinds, object), pa.string()).dictionary_encode(),
        }
    )


def region_indices(table: pa.Table, kinds: Sequence[str] = KINDS) -> dict[str, torch.Tensor]:
    """``param -> flat indices`` of a region table, restricted to parameter ``kinds``."""
    cols = table.select(["param", "flat_index", "kind"]).to_pandas()
    cols = cols[cols["kind"].astype(str).isin(list(kinds))]
    return {
        str(name): torch.as_tensor(group["flat_index"].to_numpy().copy(), dtype=torch.long)
        for name, group in cols.groupby("param", observed=True)
    }


# ------------------------------------------------------------ perturb / freeze


# --------------------------------------------------------------- rule helper


# ------------------------------------------------------------------- summary


def region_summary(model: nn.Module, regions: Mapping[str, pa.Table], prefix: str):
    """Per region and parameter tensor: size, share of the tensor, exact zeros in the weights.

    Columns: region, layer, module, kind, numel, n_selected, share, n_zero_weight
    (selected elements whose weight is exactly 0; the dequantized GGUF has many).
    """
    import pandas as pd

    params = dict(model.named_parameters())
    rows = []
    for region, table in regions.items():
        for name, idx in region_indices(table).items():
            flat = params[name].detach().reshape(-1)
            rows.append(
                {
                    "region": region,
                    "layer": param_layer(name, prefix),
                    "module": param_module(name, prefix),
                    "kind": param_kind(name, params[name].ndim),
                    "numel": flat.numel(),
                    "n_selected": idx.numel(),
                    "share": idx.numel() / flat.numel(),
                    "n_zero_weight": int((flat[idx] == 0).sum()),
                }
            )
    return pd.DataFrame(rows)


# -------------------------------------------------------------- perturbation


def region_params(model: nn.Module, region: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """The model's parameters named by ``region`` (``param -> flat indices``), checked."""
    params = dict(model.named_parameters())
    missing = sorted(set(region) - set(params))
    if missing:
        raise ValueError(f"regions: parameters not in the model: {missing[:3]}")
    for name, idx in region.items():
        if idx.numel() and int(idx.max()) >= params[name].numel():
            raise ValueError(f"regions: index out of range for {name}")
    return {n: params[n] for n in region}

"""Per-language neuron statistics and the language-specific selections of every method.

Statistics are computed per language (one job each, streamed over documents);
selections that compare languages are cheap aggregates over those statistics.
Every selection table has the columns ``layer, module, index, score, selected``
(module ``mlp`` for an FFN intermediate unit, ``q/k/v/o`` for attention), so
methods can be joined and compared.

- ``plnd``: per document, a neuron is important if it is among the per-(layer,
  part) top ``top_fraction`` of that document's scores (or its score reaches
  ``epsilon``); language-specific = important in at least ``min_fraction`` of the
  language's documents (1.0: the paper's intersection), minus the
  language-agnostic neurons (specific for every language of the comparison set).
- ``lape``: see :mod:`workflow_scripts.neurons.lape`; statistics are activation counts
  with ``positions: all`` over the language's train text.
- ``actcount``: the top ``select_proportion`` high-frequency neurons of a language
  (Mu et al.'s peaks) that are high-frequency for no other language.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from workflow_scripts.data.corpus import length_sorted_batches
from workflow_scripts.neurons.actcount import peak_neurons
from workflow_scripts.neurons.lape import lape_select
from workflow_scripts.neurons.plnd import plnd_scores

log = logging.getLogger(__name__)

MODULE_OF_PART = {"ffn": "mlp", "q": "q", "k": "k", "v": "v", "o": "o"}
SELECTION_COLUMNS = ["layer", "module", "index", "score", "selected"]


@torch.inference_mode()
def plnd_stats(model, tokenizer, texts: Sequence[str], settings: Mapping[str, Any]) -> pa.Table:
    """PLND importance statistics of one language over ``texts`` (one row per neuron).

    Columns ``layer, module, index, frequency`` (documents in which the neuron is
    important), ``n_docs``, ``score`` (mean over documents of the reduced importance).
    Memory: one batch plus ``[n_neurons]`` accumulators per (layer, part), on the device
    of that layer, brought to the host once at the end.
    """
    if not texts:
        raise ValueError("PLND: no documents")
    variant = settings["variant"]
    reduction = settings.get("reduction") or ("l2" if variant == "paper" else "sum")
    freq: dict[tuple[int, str], torch.Tensor] = {}
    total: dict[tuple[int, str], torch.Tensor] = {}
    n_docs = 0
    for batch in length_sorted_batches(texts, settings["batch_size"]):
        enc = tokenizer(
            batch,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=settings["max_length"],
        )
        scores = plnd_scores(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            parts=settings["parts"],
            variant=variant,
        )
        for key, s in scores.items():
            values = s.get(reduction).double()
            if settings.get("epsilon") is not None:
                important = values >= settings["epsilon"]
            else:
                k = max(1, math.ceil(settings["top_fraction"] * values.shape[-1]))
                top = values.topk(k, dim=-1).indices
                important = torch.zeros_like(values, dtype=torch.bool).scatter_(-1, top, True)
            freq[key] = freq.get(key, 0) + important.sum(0)
            total[key] = total.get(key, 0) + values.sum(0)
        n_docs += len(batch)
        log.info("PLND: %d/%d documents", n_docs, len(texts))
    cols: dict[str, list] = {"layer": [], "module": [], "index": [], "frequency": [], "score": []}
    for (layer, part), f in sorted(freq.items()):
        n = f.numel()
        cols["layer"].append(np.full(n, layer, dtype=np.int32))
        cols["module"].extend([MODULE_OF_PART[part]] * n)
        cols["index"].append(np.arange(n, dtype=np.int32))
        cols["frequency"].append(f.cpu().numpy().astype(np.int64))
        cols["score"].append((total[(layer, part)] / n_docs).cpu().numpy())
    return pa.table(
        {
            "layer": np.concatenate(cols["layer"]),
            "module": cols["module"],
            "index": np.concatenate(cols["index"]),
            "frequency": np.concatenate(cols["frequency"]),
            "n_docs": np.full(len(cols["module"]), n_docs, dtype=np.int64),
            "score": np.concatenate(cols["score"]),
        }
    )


def select_plnd(
    stats: Mapping[str, pa.Table], min_fraction: float, agnostic_languages: Sequence[str]
) -> dict[str, pa.Table]:
    """Language-specific PLND neurons per language from :func:`plnd_stats` tables.

    ``agnostic_languages``: the comparison set; a neuron specific for every one of
    them is language-agnostic and removed from every language's set.
    """
    missing = [lang for lang in agnostic_languages if lang not in stats]
    if missing:
        raise ValueError(f"PLND: agnostic languages {missing} have no statistics")
    specific = {}
    for lang, table in stats.items():
        n_docs = table["n_docs"].to_numpy()
        need = np.ceil(min_fraction * n_docs - 1e-9)
        specific[lang] = table["frequency"].to_numpy() >= need
    keys = {lang: _keys(t) for lang, t in stats.items()}
    first = next(iter(keys.values()))
    for lang, k in keys.items():
        if k != first:
            raise ValueError(f"PLND: statistics of {lang!r} cover other neurons than the rest")
    agnostic = np.logical_and.reduce([specific[lang] for lang in agnostic_languages])
    out = {}
    for lang, table in stats.items():
        out[lang] = pa.table(
            {
                "layer": table["layer"],
                "module": table["module"],
                "index": table["index"],
                "score": table["score"],
                "selected": specific[lang] & ~agnostic,
                "frequency": table["frequency"],
                "n_docs": table["n_docs"],
                "agnostic": agnostic,
            }
        )
    return out


def _keys(table: pa.Table) -> tuple:
    return (
        tuple(table["layer"].to_numpy()),
        tuple(table["module"].to_pylist()),
        tuple(table["index"].to_numpy()),
    )


def count_matrix(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(counts[layers, neurons], n_positions[layers])`` of an activation-count table."""
    layer, index = table["layer"].to_numpy(), table["index"].to_numpy()
    counts = np.zeros((layer.max() + 1, index.max() + 1), dtype=np.int64)
    counts[layer, index] = table["count"].to_numpy()
    n_pos = np.zeros(layer.max() + 1, dtype=np.int64)
    n_pos[layer] = table["n_positions"].to_numpy()
    return counts, n_pos


def _mlp_table(score: np.ndarray, selected: np.ndarray, **extra: np.ndarray) -> pa.Table:
    n_layers, width = score.shape
    return pa.table(
        {
            "layer": np.repeat(np.arange(n_layers, dtype=np.int32), width),
            "module": ["mlp"] * score.size,
            "index": np.tile(np.arange(width, dtype=np.int32), n_layers),
            "score": score.ravel().astype(np.float64),
            "selected": selected.ravel(),
            **{k: v.ravel() for k, v in extra.items()},
        }
    )


def select_lape(
    counts: Mapping[str, pa.Table], top_share: float, percentile: float
) -> dict[str, pa.Table]:
    """LAPE selection per language from teacher-forced activation counts.

    ``score`` is the activation probability ``P(L, j)``; ``entropy`` is shared.
    """
    langs = list(counts)
    probs = []
    for lang in langs:
        c, n = count_matrix(counts[lang])
        if (n == 0).any():
            raise ValueError(f"LAPE: no tokens counted for {lang!r}")
        probs.append(c / n[:, None])
    sel = lape_select(np.stack(probs), top_share=top_share, percentile=percentile)
    return {
        lang: _mlp_table(probs[i], sel.assigned[i], entropy=sel.entropy)
        for i, lang in enumerate(langs)
    }


def select_actcount(
    counts: Mapping[str, pa.Table], select_proportion: float
) -> dict[str, pa.Table]:
    """High-frequency neurons of each language that are high-frequency for no other language.

    ``score`` is the activation frequency (count / recorded positions).
    """
    freqs = {}
    peaks = {}
    for lang, table in counts.items():
        c, n = count_matrix(table)
        freqs[lang] = c / np.maximum(n, 1)[:, None]
        peaks[lang] = peak_neurons(c, select_proportion)
    out = {}
    for lang in counts:
        others = [peaks[o] for o in counts if o != lang]
        shared = np.logical_or.reduce(others) if others else np.zeros_like(peaks[lang])
        out[lang] = _mlp_table(freqs[lang], peaks[lang] & ~shared)
    return out

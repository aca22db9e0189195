"""Per-language neuron statistics and the language-specific selections of every method.

Statistics are computed per language (one job each, streamed over documents);
selections that compare languages are cheap aggregates over those statistics.
Every selection table has the columns ``layer, module, index, score, selected``
(module ``mlp`` for an FFN intermediate unit, ``q/k/v/o`` for attention), so
methods can be joined and compared.

- ``plnd``: per document, a neuron is important if it is among the per-(layer,
  part) top ``top_fraction`` of that document's scores and its score is above 0 (or
  its score reaches ``epsilon``); a part is ``ffn``, one routed expert's FFN
  (``ffn.e<j>``, module ``mlp.e<j>``) or the shared expert's (``ffn.shared``); language-specific = important in at least ``min_fraction`` of the
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
from workflow_scripts.models.padding import tokenize_right_padded
from workflow_scripts.neurons.actcount import peak_neurons
from workflow_scripts.neurons.lape import lape_select
from workflow_scripts.neurons.plnd import plnd_scores

log = logging.getLogger(__name__)


def module_of_part(part: str) -> str:
    """The selection tables' module of a PLND part: ``ffn`` -> ``mlp``, an expert's
    ``ffn.e3`` -> ``mlp.e3``, ``ffn.shared`` -> ``mlp.shared``; q/k/v/o unchanged."""
    return "mlp" + part[3:] if part.startswith("ffn") else part


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
        enc = tokenize_right_padded(tokenizer, batch, settings["max_length"])
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
                important &= values > 0  # an expert no token was routed to: none important
            freq[key] = freq.get(key, 0) + important.sum(0)
            total[key] = total.get(key, 0) + values.sum(0)
        n_docs += len(batch)
        log.info("PLND: %d/%d documents", n_docs, len(texts))
    cols: dict[str, list] = {"layer": [], "module": [], "index": [], "frequency": [], "score": []}
    for (layer, part), f in sorted(freq.items()):
        n = f.numel()
        cols["layer"].append(np.full(n, layer, dtype=np.int32))
        cols["module"].extend([module_of_part(part)] * n)
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
    _same_keys({lang: t.select(["layer", "module", "index"]) for lang, t in stats.items()}, "PLND")
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


def count_vectors(table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """``(keys, counts[n], n_positions[n])`` of an activation-count table, one entry per
    row; ``keys`` holds its ``layer, module, index`` (module ``mlp`` if the table has
    none: tables written before mixture-of-experts support)."""
    n = table.num_rows
    module = table["module"] if "module" in table.column_names else pa.array(["mlp"] * n)
    keys = pa.table({"layer": table["layer"], "module": module, "index": table["index"]})
    return keys, table["count"].to_numpy(), table["n_positions"].to_numpy()


def count_matrix(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(counts[layers, columns], n_positions[layers, columns])`` of an activation-count
    table: a layer's neuron groups side by side in table order (one ``mlp`` group, or
    every expert's), zero-padded to the widest layer."""
    layer = table["layer"].to_numpy()
    column = np.zeros(len(layer), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, layer[1:] != layer[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(layer)], strict=True):
        column[a:b] = np.arange(b - a)
    shape = (layer.max() + 1, column.max() + 1)
    counts, n_pos = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    counts[layer, column] = table["count"].to_numpy()
    n_pos[layer, column] = table["n_positions"].to_numpy()
    return counts, n_pos


def _frequency(counts: np.ndarray, n_positions: np.ndarray) -> np.ndarray:
    """count / positions per neuron (0 where a column saw no position: an expert that no
    token of the language was routed to)."""
    return np.divide(counts, n_positions, out=np.zeros(counts.shape), where=n_positions > 0)


def _same_keys(keys: Mapping[str, pa.Table], what: str) -> pa.Table:
    first = next(iter(keys.values()))
    for lang, k in keys.items():
        if not k.equals(first):
            raise ValueError(f"{what}: statistics of {lang!r} cover other neurons than the rest")
    return first


def _neuron_table(
    keys: pa.Table, score: np.ndarray, selected: np.ndarray, **extra: np.ndarray
) -> pa.Table:
    return pa.table(
        {
            "layer": keys["layer"].cast(pa.int32()),
            "module": keys["module"],
            "index": keys["index"].cast(pa.int32()),
            "score": score.astype(np.float64),
            "selected": selected,
            **extra,
        }
    )


def select_lape(
    counts: Mapping[str, pa.Table], top_share: float, percentile: float
) -> dict[str, pa.Table]:
    """LAPE selection per language from teacher-forced activation counts.

    ``score`` is the activation probability ``P(L, j)`` (for an expert's neuron: over
    the tokens routed to that expert); ``entropy`` is shared.
    """
    langs = list(counts)
    keys, probs = {}, []
    for lang in langs:
        keys[lang], c, n = count_vectors(counts[lang])
        if not n.any():
            raise ValueError(f"LAPE: no tokens counted for {lang!r}")
        probs.append(_frequency(c, n))
    common = _same_keys(keys, "LAPE")
    sel = lape_select(np.stack(probs)[:, None, :], top_share=top_share, percentile=percentile)
    return {
        lang: _neuron_table(common, probs[i], sel.assigned[i, 0], entropy=sel.entropy[0])
        for i, lang in enumerate(langs)
    }


def select_actcount(
    counts: Mapping[str, pa.Table], select_proportion: float
) -> dict[str, pa.Table]:
    """High-frequency neurons of each language that are high-frequency for no other language.

    ``score`` is the activation frequency (count / recorded positions). Neurons are
    ranked by frequency: the same order as by count (Mu et al.) when every neuron saw
    the same positions, and a fair one across experts that saw different tokens.
    """
    keys, freqs, peaks = {}, {}, {}
    for lang, table in counts.items():
        keys[lang], c, n = count_vectors(table)
        freqs[lang] = _frequency(c, n)
        peaks[lang] = peak_neurons(freqs[lang], select_proportion)
    common = _same_keys(keys, "actcount")
    out = {}
    for lang in counts:
        others = [peaks[o] for o in counts if o != lang]
        shared = np.logical_or.reduce(others) if others else np.zeros_like(peaks[lang])
        out[lang] = _neuron_table(common, freqs[lang], peaks[lang] & ~shared)
    return out

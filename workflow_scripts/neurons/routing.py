"""Which experts a language uses: routing frequency per (layer, expert) of a
mixture-of-experts model, and the language-specific experts selected from it.

Statistic (one language, one job): teacher-forced over the language's train text, for
every non-padding token and every mixture-of-experts layer, the router's top-k choice
is read at the experts module's inputs (``top_k_index``, ``top_k_weights``). Per
(layer, expert): ``count`` (tokens whose top-k includes the expert), ``weight_sum``
(their routing weights summed), ``n_tokens``; ``frequency = count / n_tokens``, so the
frequencies of a layer sum to ``top_k``.

Selection: LAPE's entropy rule (:func:`~workflow_scripts.neurons.lape.lape_select`)
applied to experts instead of neurons: the routing frequencies of every language are
normalised over languages, experts whose largest frequency reaches the
``percentile``-th percentile of all frequencies take part, the ``top_share`` of all
experts with the lowest entropy are kept, each assigned to every language whose
frequency reaches that threshold. A selected expert is the unit
``(layer, "expert", j)`` (:mod:`workflow_scripts.units`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from workflow_scripts.data.corpus import length_sorted_batches
from workflow_scripts.models.anatomy import ExpertSite, expert_sites
from workflow_scripts.models.hooks import expert_inputs
from workflow_scripts.models.padding import tokenize_right_padded
from workflow_scripts.models.placement import OnDevices, input_device
from workflow_scripts.neurons.lape import lape_select
from workflow_scripts.units import EXPERT

log = logging.getLogger(__name__)

ROUTING_COLUMNS = ["layer", "expert", "count", "weight_sum", "n_tokens"]


class _Routing:
    """Per layer device counters of the routed tokens, filled by the experts' pre-hooks."""

    def __init__(self, sites: Sequence[ExpertSite]):
        self.sites = {s.layer: s for s in sites}
        self.mask: OnDevices | None = None
        self.acc: dict[int, list[torch.Tensor]] = {}

    def hook(self, layer: int):
        site = self.sites[layer]

        def pre(module, args, kwargs):
            _, index, weights = expert_inputs(module, args, kwargs)
            valid = self.mask(index.device).reshape(-1)
            chosen = index[valid].reshape(-1)
            count = torch.bincount(chosen, minlength=site.n_experts)[: site.n_experts]
            weight = torch.zeros(site.n_experts, dtype=torch.float64, device=index.device)
            weight.index_add_(0, chosen, weights[valid].reshape(-1).double())
            n = valid.sum()
            if layer in self.acc:
                for total, part in zip(self.acc[layer], (count, weight, n), strict=True):
                    total += part
            else:
                self.acc[layer] = [count, weight, n]

        return pre


@torch.inference_mode()
def routing_counts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int = 256,
) -> pa.Table:
    """Routing statistics of ``texts`` (one language): columns ``ROUTING_COLUMNS``, one row
    per (mixture-of-experts layer, expert). Memory: one batch plus ``[experts]`` counters
    per layer on that layer's device, brought to the host once at the end."""
    if not texts:
        raise ValueError("routing statistics: no documents")
    sites = expert_sites(model)
    routing = _Routing(sites)
    device = input_device(model)
    handles = [
        s.experts.register_forward_pre_hook(routing.hook(s.layer), with_kwargs=True) for s in sites
    ]
    done = 0
    try:
        for batch in length_sorted_batches(texts, batch_size):
            enc = tokenize_right_padded(tokenizer, batch, max_length).to(device)
            routing.mask = OnDevices(enc["attention_mask"].bool())
            model.base_model(**enc, use_cache=False)
            done += len(batch)
            log.info("routing: %d/%d documents", done, len(texts))
    finally:
        for h in handles:
            h.remove()
    cols: dict[str, list] = {c: [] for c in ROUTING_COLUMNS}
    for s in sites:
        count, weight, n = (t.cpu() for t in routing.acc[s.layer])
        cols["layer"].append(np.full(s.n_experts, s.layer, dtype=np.int32))
        cols["expert"].append(np.arange(s.n_experts, dtype=np.int32))
        cols["count"].append(count.numpy().astype(np.int64))
        cols["weight_sum"].append(weight.numpy())
        cols["n_tokens"].append(np.full(s.n_experts, int(n), dtype=np.int64))
    return pa.table({c: np.concatenate(v) for c, v in cols.items()})


def routing_frequency(table: pa.Table) -> np.ndarray:
    """``count / n_tokens`` per row of a routing table."""
    n = table["n_tokens"].to_numpy()
    return np.divide(table["count"].to_numpy(), n, out=np.zeros(len(n)), where=n > 0)


def select_experts(
    stats: Mapping[str, pa.Table], top_share: float, percentile: float
) -> dict[str, pa.Table]:
    """Language-specific experts per language from routing tables (module docstring).

    Columns ``layer, module`` (``expert``), ``index`` (the expert), ``score`` (routing
    frequency), ``selected``, ``entropy`` (shared), ``weight_share`` (mean routing weight
    of the expert per token of the language).
    """
    langs = list(stats)
    keys = [stats[lang].select(["layer", "expert"]) for lang in langs]
    for lang, k in zip(langs, keys, strict=True):
        if not k.equals(keys[0]):
            raise ValueError(f"experts: routing of {lang!r} covers other experts than the rest")
        if not stats[lang]["n_tokens"].to_numpy().any():
            raise ValueError(f"experts: no tokens routed for {lang!r}")
    freq = np.stack([routing_frequency(stats[lang]) for lang in langs])
    sel = lape_select(freq[:, None, :], top_share=top_share, percentile=percentile)
    out = {}
    for i, lang in enumerate(langs):
        t = stats[lang]
        n = np.maximum(t["n_tokens"].to_numpy(), 1)
        out[lang] = pa.table(
            {
                "layer": t["layer"],
                "module": [EXPERT] * t.num_rows,
                "index": t["expert"],
                "score": freq[i],
                "selected": sel.assigned[i, 0],
                "entropy": sel.entropy[0],
                "weight_share": t["weight_sum"].to_numpy() / n,
            }
        )
    return out

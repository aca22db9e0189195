"""Per-language statistics the interventions need (docs/methods.md, "Interventions").

From teacher-forced text of one language, reduced on the fly (memory: one batch plus
float64 accumulators per unit and per layer):

- per unit ``(layer, module, index)``, at its intervention point
  (:mod:`workflow_scripts.evaluation.interventions`): the mean and standard deviation
  of its activation over all tokens, and its mean over the tokens where it is positive
  (``positive_mean``; ``positive_share`` of the tokens): what ``mean`` and ``set`` use;
- per decoder layer l, the mean hidden state after layer l (``mu_l``), for DiffMean
  steering directions ``mu_l(target) - mu_l(source)``.

Statistics cover dense units (``mlp`` of dense layers, q/k/v/o); mixture-of-experts
layers' neurons are skipped (only ``zero`` applies to them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from workflow_scripts.data.corpus import length_sorted_batches
from workflow_scripts.evaluation.interventions import STATISTICS, Unit, _group_units, _plan
from workflow_scripts.io import read_metadata, read_parquet
from workflow_scripts.models.anatomy import ExpertSite, attention_sites, decoder_layers, ffn_sites
from workflow_scripts.models.padding import tokenize_right_padded
from workflow_scripts.models.placement import input_device
from workflow_scripts.units import ATTENTION

log = logging.getLogger(__name__)

STATS_COLUMNS = ["layer", "module", "index", "mean", "std", "positive_mean", "positive_share"]
HIDDEN_COLUMNS = ["layer", "mean"]
STAT_MODULES = ("mlp", *ATTENTION)


def dense_units(model: nn.Module, modules: Iterable[str] = STAT_MODULES) -> list[Unit]:
    """Every dense unit of ``modules``: MLP neurons of dense layers, attention channels
    (none where the attention layout has no per-channel sites, as GPT-2's)."""
    modules = set(modules)
    units: list[Unit] = []
    if "mlp" in modules:
        for site in ffn_sites(model):
            if not isinstance(site, ExpertSite):
                units += [(site.layer, "mlp", i) for i in range(site.size)]
    attn = [m for m in ATTENTION if m in modules]
    try:
        sites = attention_sites(model) if attn else []
    except NotImplementedError as err:  # e.g. GPT-2's fused Conv1D qkv: MLP neurons only
        log.warning("unit statistics: no attention units (%s)", err)
        sites = []
    for s in sites:
        units += [(s.layer, m, i) for m in attn for i in range(s.size(m))]
    return units


class _Accumulator:
    """Float64 sums per plan entry (units) and per layer (hidden states)."""

    def __init__(self):
        self.mask: torch.Tensor | None = None  # [B, T] valid positions of the batch
        self.units: dict[tuple[int, str], list[torch.Tensor]] = {}
        self.hidden: dict[int, torch.Tensor] = {}
        self.n_tokens = 0

    def add_units(self, key: tuple[int, str], x: torch.Tensor) -> None:
        rows = x[self.mask.to(x.device)]  # [N, n]; half precision squared in float32
        if rows.dtype in (torch.float16, torch.bfloat16):
            rows = rows.float()
        f64 = torch.float64
        stats = [
            rows.sum(0, dtype=f64),
            rows.square().sum(0, dtype=f64),
            rows.clamp(min=0).sum(0, dtype=f64),
            (rows > 0).sum(0, dtype=f64),
        ]
        acc = self.units.get(key)
        self.units[key] = stats if acc is None else [a + b for a, b in zip(acc, stats, strict=True)]

    def add_hidden(self, layer: int, h: torch.Tensor) -> None:
        s = h[self.mask.to(h.device)].double().sum(0)
        self.hidden[layer] = s if layer not in self.hidden else self.hidden[layer] + s


@contextlib.contextmanager
def _stat_hooks(model: nn.Module, units: Sequence[Unit], acc: _Accumulator) -> Iterator[None]:
    groups = _group_units(units)
    handles = []

    def pre(key, idx):
        def hook(_m, args):
            acc.add_units(key, args[0].index_select(-1, idx))

        return hook

    def out(key, idx):
        def hook(_m, _args, output):
            acc.add_units(key, output.index_select(-1, idx))

        return hook

    def layer_out(la):
        def hook(_m, _args, output):
            acc.add_hidden(la, output[0] if isinstance(output, tuple) else output)

        return hook

    try:
        for kind, module, idx, _, key in _plan(model, groups):
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(pre(key, idx)))
            elif kind == "out":
                handles.append(module.register_forward_hook(out(key, idx)))
        for la, layer in enumerate(decoder_layers(model)):
            handles.append(layer.register_forward_hook(layer_out(la)))
        yield groups
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def unit_statistics(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    modules: Iterable[str] = STAT_MODULES,
    max_length: int = 128,
    batch_size: int = 8,
) -> tuple[pa.Table, pa.Table, int]:
    """``(unit table, hidden table, n_tokens)`` of ``texts`` (teacher forcing, pads masked).

    Unit table: ``STATS_COLUMNS``, one row per dense unit; hidden table: one row per
    decoder layer, ``mean`` = the mean hidden state after that layer (float32 list).
    """
    if not texts:
        raise ValueError("unit statistics: no text")
    units = dense_units(model, modules)
    acc = _Accumulator()
    device = input_device(model)
    was_training = model.training
    model.eval()
    try:
        with _stat_hooks(model, units, acc) as groups:
            for batch in length_sorted_batches(texts, batch_size):
                enc = tokenize_right_padded(tokenizer, batch, max_length).to(device)
                acc.mask = enc["attention_mask"].bool()
                acc.n_tokens += int(acc.mask.sum())
                model.base_model(**enc, use_cache=False)
    finally:
        model.train(was_training)
    n = acc.n_tokens
    cols: dict[str, list] = {c: [] for c in STATS_COLUMNS}
    for key, indices in groups.items():
        total, square, positive, count = (t.cpu().numpy() for t in acc.units[key])
        mean = total / n
        cols["layer"] += [key[0]] * len(indices)
        cols["module"] += [key[1]] * len(indices)
        cols["index"] += list(indices)
        cols["mean"] += list(mean)
        cols["std"] += list(np.sqrt(np.maximum(square / n - mean**2, 0)))
        cols["positive_mean"] += list(np.where(count > 0, positive / np.maximum(count, 1), 0.0))
        cols["positive_share"] += list(count / n)
    types = [pa.int64(), pa.string(), pa.int64()] + [pa.float64()] * 4
    unit_table = pa.table(
        {c: pa.array(cols[c], t) for c, t in zip(STATS_COLUMNS, types, strict=True)}
    )
    layers = sorted(acc.hidden)
    hidden = pa.table(
        {
            "layer": pa.array(layers, pa.int64()),
            "mean": pa.array(
                [(acc.hidden[la] / n).float().cpu().numpy().tolist() for la in layers],
                pa.list_(pa.float32()),
            ),
        }
    )
    return unit_table, hidden, n


# ------------------------------------------------------------------------ reading


def unit_values(paths: Mapping[str, str | Path], statistic: str = "mean") -> dict[Unit, float]:
    """Per unit, ``statistic`` (``mean`` or ``positive_mean``) over the languages of
    ``paths`` (``lang -> unit statistics table``) pooled: token-weighted (and, for
    ``positive_mean``, weighted by the tokens where the unit is positive)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unit statistic must be one of {STATISTICS}, got {statistic!r}")
    if not paths:
        raise ValueError("unit_values: no statistics table")
    num = den = None
    keys = None
    for lang, path in paths.items():
        table = read_parquet(path, STATS_COLUMNS)
        n = float(read_metadata(path).get("n_tokens", 0))
        if n <= 0:
            raise ValueError(f"{path}: unit statistics of {lang} without n_tokens")
        here = list(zip(*(table[c].to_pylist() for c in ("layer", "module", "index")), strict=True))
        if keys is None:
            keys = here
        elif here != keys:
            raise ValueError(f"{path}: its units differ from the other languages' (another model?)")
        weight = n * (table["positive_share"].to_numpy() if statistic == "positive_mean" else 1.0)
        value = table[statistic].to_numpy() * weight
        num = value if num is None else num + value
        den = weight if den is None else den + weight
    pooled = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    return {(int(la), str(m), int(i)): float(v) for (la, m, i), v in zip(keys, pooled, strict=True)}


def mean_hidden(path: str | Path) -> dict[int, torch.Tensor]:
    """``layer -> mu_l`` (float32) of one language's hidden-state table."""
    table = read_parquet(path, HIDDEN_COLUMNS)
    return {
        int(la): torch.tensor(mu, dtype=torch.float32, device="cpu")
        for la, mu in zip(table["layer"].to_pylist(), table["mean"].to_pylist(), strict=True)
    }


def diffmean_directions(
    source: str | Path, target: str | Path, layers: Sequence[int] | None = None
) -> dict[int, torch.Tensor]:
    """DiffMean: ``mu_l(target) - mu_l(source)`` for the given layers (None: every layer)."""
    mu_s, mu_t = mean_hidden(source), mean_hidden(target)
    if set(mu_s) != set(mu_t):
        raise ValueError(f"{source} and {target} have different layers (different models?)")
    layers = sorted(mu_s) if layers is None else list(layers)
    bad = [la for la in layers if la not in mu_s]
    if bad:
        raise ValueError(f"steer: layers {bad} not in {source} (layers 0..{max(mu_s)})")
    return {la: mu_t[la] - mu_s[la] for la in layers}

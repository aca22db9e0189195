"""Activation counting (Mu et al. 2024), reduced on the fly from forward hooks.

Per condition (one language, or the parallel multilingual prompt) and per
(layer, neuron): how many recorded positions had activation ``> 0``; per
layer: the mean over recorded positions of the share of inhibited neurons
(activation ``<= 0``) and of exact zeros. In a mixture-of-experts layer every
expert's neurons are counted over the recorded positions routed to it (its
activations recomputed from the experts module's inputs, one extra gate projection
per routed token), so each neuron has its own number of positions.

Two ways of choosing the recorded positions (``positions`` in config):

- ``generated`` (the paper): ``model.generate`` and, at every forward call, the
  last position only (the prompt's last token, then each new token). Batches
  are left-padded; a sequence that has emitted EOS stops being recorded, as if
  it had run alone with batch 1.
- ``all``: teacher-forced over every non-padding token of each prompt, running
  the trunk only (no LM head), as LAPE does.

Memory is one batch plus ``[layers, neurons]`` accumulators, kept on the device of
each layer's activations and brought to the host once per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from workflow_scripts.data.corpus import length_sorted_batches
from workflow_scripts.data.prompts import condition_prompts, format_prompts
from workflow_scripts.models.anatomy import ExpertSite, MLPSite, ffn_sites, layer_modules
from workflow_scripts.models.hooks import activation_hooks
from workflow_scripts.models.padding import stop_token_ids
from workflow_scripts.models.placement import OnDevices, input_device

log = logging.getLogger(__name__)


@dataclass
class ActivationCounts:
    """Accumulators of one condition.

    Columns of a layer are its neuron groups side by side (:func:`layer_modules`): one
    ``mlp`` group for a dense MLP; ``mlp.e0 ... mlp.e{E-1}`` (and ``mlp.shared``) for a
    mixture-of-experts layer, where each expert's columns count only the positions
    routed to it (``column_positions``; ``n_positions`` counts a layer's activation rows:
    its positions, times the experts each was routed to).
    """

    counts: torch.Tensor  # [layers, width] int64: positions with act > 0
    inhibited: torch.Tensor  # [layers] float64: sum over activation rows of share(act <= 0)
    zeros: torch.Tensor  # [layers] float64: sum over activation rows of share(act == 0)
    n_positions: torch.Tensor  # [layers] int64: activation rows (see above)
    # [layers, width] int64: positions seen by each column (default: n_positions, dense)
    column_positions: torch.Tensor | None = None
    layout: list[list[tuple[str, int]]] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_layers, width = self.counts.shape
        if self.column_positions is None:
            self.column_positions = self.n_positions[:, None].expand(n_layers, width).clone()
        if not self.layout:
            self.layout = [[("mlp", width)] for _ in range(n_layers)]

    @classmethod
    def empty(cls, sites: Sequence[MLPSite | ExpertSite]) -> ActivationCounts:
        layout = layer_modules(sites)
        n_layers, width = len(sites), max(sum(w for _, w in mods) for mods in layout)
        host = "cpu"  # the finished tables; each batch's device counters are merged in
        zeros = torch.zeros(n_layers, width, dtype=torch.int64, device=host)
        return cls(
            zeros,
            torch.zeros(n_layers, dtype=torch.float64, device=host),
            torch.zeros(n_layers, dtype=torch.float64, device=host),
            torch.zeros(n_layers, dtype=torch.int64, device=host),
            zeros.clone(),
            layout,
        )

    def add(self, layer: int, acts: torch.Tensor, offset: int = 0) -> None:
        """Accumulate ``acts[N, I]``: N recorded positions of one layer's columns from
        ``offset``."""
        if acts.numel() == 0:
            return
        acc = LayerAccumulator(self.counts.shape[-1], acts.device)
        acc.add(acts, offset)
        self.merge(layer, acc)

    def merge(self, layer: int, acc: LayerAccumulator) -> None:
        """Add one layer's device accumulators (one copy to the host per layer)."""
        width = acc.counts.shape[-1]
        self.counts[layer, :width] += acc.counts.cpu()
        self.column_positions[layer, :width] += acc.column_positions.cpu()
        self.inhibited[layer] += acc.inhibited.cpu()
        self.zeros[layer] += acc.zeros.cpu()
        self.n_positions[layer] += acc.n_positions.cpu()

    def count_table(self) -> pa.Table:
        """Columns layer, module, index (within the module), count, n_positions (the
        positions that neuron saw): one row per neuron."""
        cols: dict[str, list] = {"layer": [], "module": [], "index": [], "column": []}
        for layer, mods in enumerate(self.layout):
            start = 0
            for module, width in mods:
                cols["layer"].append(np.full(width, layer, dtype=np.int32))
                cols["module"] += [module] * width
                cols["index"].append(np.arange(width, dtype=np.int32))
                cols["column"].append(layer * self.counts.shape[-1] + start + np.arange(width))
                start += width
        flat = np.concatenate(cols["column"])
        return pa.table(
            {
                "layer": np.concatenate(cols["layer"]),
                "module": cols["module"],
                "index": np.concatenate(cols["index"]),
                "count": self.counts.numpy().ravel()[flat],
                "n_positions": self.column_positions.numpy().ravel()[flat],
            }
        )

    def inhibition_table(self) -> pa.Table:
        """Per layer: mean share of inhibited (<= 0) and of zero neurons (over positions;
        over routed (position, expert) pairs in a mixture-of-experts layer)."""
        n = self.n_positions.clamp(min=1).double()
        return pa.table(
            {
                "layer": np.arange(len(n), dtype=np.int32),
                "inhibited_share": (self.inhibited / n).numpy(),
                "zero_share": (self.zeros / n).numpy(),
                "n_positions": self.n_positions.numpy(),
            }
        )


class LayerAccumulator:
    """One layer's counters, on the device of the activations the hook sees."""

    def __init__(self, width: int, device: torch.device):
        self.counts = torch.zeros(width, dtype=torch.int64, device=device)
        self.column_positions = torch.zeros(width, dtype=torch.int64, device=device)
        self.inhibited = torch.zeros((), dtype=torch.float64, device=device)
        self.zeros = torch.zeros((), dtype=torch.float64, device=device)
        self.n_positions = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, acts: torch.Tensor, offset: int = 0) -> None:
        """``acts[N, I]``: N recorded positions of columns ``offset .. offset + I``."""
        n, width = acts.shape
        cols = slice(offset, offset + width)
        counted = (acts > 0).sum(0)
        self.counts[cols] += counted
        self.column_positions[cols] += n
        # sums over positions of the share of inactive / zero neurons, from two counts
        self.inhibited += n - counted.sum().double() / width
        self.zeros += torch.count_nonzero(acts == 0).double() / width
        self.n_positions += n


class _Recorder:
    """Hook state: which positions of the current forward call to record.

    ``keep`` ``[B, T]`` marks them: the attention mask (mode ``all``), or the last
    position of every sequence not yet done (mode ``generated``). Accumulators and
    masks live on the device of each layer's activations (with a ``device_map`` layers
    sit on different GPUs); nothing goes to the host until :meth:`finish`, once per batch,
    but one flag: whether the batch has no pad (then no position is indexed out).
    """

    def __init__(self, counts: ActivationCounts, mode: str, eos_ids: set[int]):
        self.counts, self.mode = counts, mode
        self.eos_ids = sorted(eos_ids)
        self.mask: torch.Tensor | None = None  # [B, T] for mode "all"
        self.done: torch.Tensor | None = None  # [B] for mode "generated"
        self.eos: torch.Tensor | None = None
        self.acc: dict[int, LayerAccumulator] = {}
        self._keep: OnDevices | None = None  # this forward call's recorded positions
        self._every = False  # mode "all" and no pad: every position recorded (no indexing)

    def pre_forward(self, _module, args, kwargs) -> None:
        """Generation: a sequence whose last input token is EOS (or pad after it) is done."""
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if self.done is None:  # first call: the prompt
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            self.eos = torch.tensor(self.eos_ids, dtype=torch.long, device=input_ids.device)
        else:
            self.done |= torch.isin(input_ids[:, -1], self.eos)
        keep = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        keep[:, -1] = ~self.done
        self._keep = OnDevices(keep)

    def __call__(
        self, layer: int, acts: torch.Tensor, offset: int = 0, rows: torch.Tensor | None = None
    ) -> None:
        """``acts`` ``[B, T, I]`` or ``[B * T, I]``; or ``[N, I]`` of flattened ``rows``."""
        acts = acts.detach()
        if self._keep is None:  # mode "all": the token mask, set before the forward
            self._keep = OnDevices(self.mask)
            self._every = bool(self.mask.all())  # one flag per batch
        keep = self._keep(acts.device).reshape(-1)
        if rows is not None:
            keep = keep[rows]
        selected = acts.reshape(-1, acts.shape[-1])
        if not (self._every and rows is None):
            selected = selected[keep]
        if selected.numel() == 0:
            return
        if layer not in self.acc:
            self.acc[layer] = LayerAccumulator(self.counts.counts.shape[-1], acts.device)
        self.acc[layer].add(selected, offset)

    def finish(self) -> None:
        """Bring this batch's counters to the host (one copy per layer)."""
        for layer, acc in sorted(self.acc.items()):
            self.counts.merge(layer, acc)
        self.acc = {}


@torch.inference_mode()
def count_activations(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    positions: str = "generated",
    batch_size: int = 8,
    max_new_tokens: int = 100,
    max_length: int = 512,
    temperature: float = 0.0,
    seed: int = 0,
    add_special_tokens: bool = True,
) -> ActivationCounts:
    """Count MLP activations of ``model`` over ``prompts`` (already formatted strings).

    ``positions='generated'``: greedy (``temperature=0``) or sampled generation
    of up to ``max_new_tokens``, recording the last position of every forward
    call. ``positions='all'``: teacher-forced, every token of every prompt
    (truncated to ``max_length`` tokens). ``add_special_tokens=False`` for
    prompts that already carry them (chat-template output).
    """
    if positions not in ("generated", "all"):
        raise ValueError(f"positions must be 'generated' or 'all', got {positions!r}")
    if not prompts:
        raise ValueError("no prompts to count activations on")
    sites = ffn_sites(model)
    counts = ActivationCounts.empty(sites)
    n_new = max_new_tokens if positions == "generated" else 0
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and limit > n_new:  # never index past a learned position table (GPT-2)
        max_length = min(max_length, limit - n_new)
    eos_ids = set(stop_token_ids(model, tokenizer))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    device = input_device(model)
    done = 0
    for batch in length_sorted_batches(prompts, batch_size):  # results are order-free
        recorder = _Recorder(counts, positions, eos_ids)
        enc = tokenizer(
            batch,
            return_tensors="pt",
            padding=True,
            padding_side="right" if positions == "all" else "left",
            truncation=True,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
        ).to(device)
        if positions == "all":
            recorder.mask = enc["attention_mask"].bool()
            with activation_hooks(sites, recorder):
                model.base_model(**enc)
        else:
            pre = model.register_forward_pre_hook(recorder.pre_forward, with_kwargs=True)
            try:
                with activation_hooks(sites, recorder):
                    model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        do_sample=temperature > 0,
                        temperature=temperature if temperature > 0 else None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=sorted(eos_ids) or None,
                    )
            finally:
                pre.remove()
        recorder.finish()
        done += len(batch)
        log.info("counted %d/%d prompts", done, len(prompts))
    counts.info = {
        "positions": positions,
        "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens if positions == "generated" else 0,
        "temperature": temperature,
    }
    return counts


def peak_neurons(counts: np.ndarray, select_proportion: float) -> np.ndarray:
    """Boolean mask, shaped as ``counts``, of the top ``select_proportion`` by value
    (counts, or frequencies where neurons saw different numbers of positions).

    All (layer, neuron) pairs are flattened and sorted by value, descending
    (ties broken by position, stable); the first ``ceil(p * n)`` are kept.
    """
    flat = counts.ravel()
    k = int(np.ceil(select_proportion * flat.size))
    order = np.argsort(-flat, kind="stable")[:k]
    mask = np.zeros(flat.size, dtype=bool)
    mask[order] = True
    return mask.reshape(counts.shape)


def count_condition(
    model,
    tokenizer,
    condition: str,
    corpora: Mapping[str, str],
    settings: Mapping[str, Any],
    model_name: str = "",
) -> tuple[ActivationCounts, dict[str, Any]]:
    """Build the condition's prompts and count; returns the counts and the tables' metadata.

    ``condition`` is a language code (prompts from ``corpora[condition]``) or
    ``'parallel'`` (aligned documents of every language in ``corpora``). ``settings``:
    the ``actcount`` section (``ACTCOUNT_SETTINGS`` of :mod:`workflow_scripts.neurons`).
    """
    s = settings
    parallel_source = s.get("parallel_source", "bundled")
    builder = s.get("parallel_builder", "concat")
    prompts = condition_prompts(condition, corpora, s)
    prompts, chat = format_prompts(tokenizer, prompts, s["chat_template"], s["system_prompt"])
    log.info("%s: %d prompts (chat template: %s)", condition, len(prompts), chat)
    counts = count_activations(
        model,
        tokenizer,
        prompts,
        positions=s["positions"],
        batch_size=s["batch_size"],
        max_new_tokens=s["max_new_tokens"],
        max_length=s["max_length"],
        temperature=s["temperature"],
        seed=s["seed"],
        add_special_tokens=not chat,
    )
    meta = {
        **counts.info,
        "model": model_name,
        "condition": condition,
        "chat_template": chat,
        "languages": sorted(corpora),
    }
    if condition == "parallel":
        meta.update(parallel_source=parallel_source, parallel_builder=builder)
    return counts, meta

"""Ablation of selected neurons and its evaluation by perplexity (METHODS.md sections 2, 4, 5).

A unit is ``(layer, module, index)`` as in the selection tables of
:mod:`workflow_scripts.neurons.selection`. Deactivating it means (METHODS.md section 2):

- ``mlp`` k: zero row k of ``gate/up`` (``W_in`` for plain MLPs) and column k of
  ``down``; with hooks, zero channel k of the down projection's *input* (the
  neuron's whole contribution), which gives the same output exactly;
- ``q``/``k``/``v`` c: zero output channel c of that projection (its weight row and
  bias); with hooks, zero channel c of the projection's output (before Gemma 3's
  ``q_norm``/``k_norm``, exactly like the zeroed row);
- ``o`` c: zero input channel c of ``o_proj`` (its weight column).

:func:`deactivated` does either (``mode="hooks"`` or ``"weights"``) and restores
the model on exit. :func:`perplexity` is token-weighted and computes the LM head
on contiguous ``[N, V]`` chunks of the valid positions only (FACTS.md).
:func:`ablation_matrix` evaluates every target language's selection, and equal-count
random selections of the same (layer, module) strata, in every evaluation language.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.models.anatomy import UP_NAMES, _child, mlp_sites
from workflow_scripts.models.padding import pad_id, right_padded
from workflow_scripts.neurons.plnd import attention_sites

log = logging.getLogger(__name__)

Unit = tuple[int, str, int]  # (layer, module, index)
MODULES = ("mlp", "q", "k", "v", "o")
MODES = ("hooks", "weights")
SETTINGS = ("base", "selected", "random")
MATRIX_COLUMNS = ["setting", "target_lang", "eval_lang", "n_units", "ppl", "base_ppl", "seed"]
MAX_LOGITS = 2**24  # logits elements per cross-entropy chunk (64 MB in float32)


# ---------------------------------------------------------------------- perplexity


@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted perplexity ``exp(nll_sum / n_tokens)`` over the predicted tokens."""

    ppl: float
    nll_sum: float
    n_tokens: int


def _budgeted_ids(
    tokenizer, texts: Sequence[str], max_length: int, max_tokens: int | None
) -> list[list[int]]:
    """Token ids per text (truncated), cut so that at most ``max_tokens`` are predicted.

    The budget is spent in text order, position by position, so the evaluated tokens
    do not depend on the batch size. Texts with nothing to predict are dropped.
    """
    if not texts:
        return []
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    out = []
    left = math.inf if max_tokens is None else max_tokens
    for ids in enc:
        if left <= 0:
            break
        n_pred = min(len(ids) - 1, left)
        if n_pred > 0:
            out.append(list(ids[: n_pred + 1]))
            left -= n_pred
    return out


def _softcap(model: nn.Module) -> float | None:
    cfg = getattr(model, "config", None)
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap is None and hasattr(cfg, "get_text_config"):
        cap = getattr(cfg.get_text_config(), "final_logit_softcapping", None)
    return float(cap) if cap else None


def _chunked_nll(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None
) -> float:
    """Summed cross-entropy of ``head(hidden)`` ``[N, V]``, a bounded number of rows at a time."""
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    rows = max(1, MAX_LOGITS // vocab)
    total = 0.0
    for i in range(0, hidden.shape[0], rows):
        logits = head(hidden[i : i + rows])
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        total += F.cross_entropy(logits, targets[i : i + rows], reduction="sum").item()
    return total


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    max_length: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = None,
) -> PerplexityResult:
    """Token-weighted perplexity of ``model`` over ``texts`` (teacher forcing).

    Each text is truncated to ``max_length`` tokens (special tokens as the tokenizer
    adds them); every token after the first is predicted from its prefix. With
    ``max_tokens`` only the first ``max_tokens`` predicted tokens (in text order)
    count. Batches are sorted by length and right-padded (pads are masked and never
    predicted; the tokenizer is not modified). The trunk (``model.base_model``) runs
    on the batch, the LM head (plus Gemma's final logit softcapping) only on the
    hidden states of the valid positions, in chunks.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"perplexity: max_tokens must be >= 1, got {max_tokens}")
    docs = _budgeted_ids(tokenizer, texts, max_length, max_tokens)
    if not docs:
        raise ValueError("perplexity: no text has a token to predict")
    pad = pad_id(tokenizer)
    trunk, head, cap = model.base_model, model.get_output_embeddings(), _softcap(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))
        nll_sum, n_tokens = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [docs[i] for i in order[start : start + batch_size]]
            input_ids, mask = right_padded(batch, pad)
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = trunk(input_ids=input_ids, attention_mask=mask, use_cache=False)[0]
            valid = mask[:, 1:].bool()  # position t predicts token t+1
            h = hidden[:, :-1][valid].contiguous()
            nll_sum += _chunked_nll(head, h, input_ids[:, 1:][valid], cap)
            n_tokens += int(valid.sum())
    finally:
        model.train(was_training)
    return PerplexityResult(math.exp(nll_sum / n_tokens), nll_sum, n_tokens)


def perplexity_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`perplexity` keywords among the ablation settings."""
    return {key: settings[key] for key in ("max_length", "batch_size", "max_tokens")}


def evaluation_texts(
    corpora: Mapping[str, str], split: str, n_docs: int
) -> tuple[dict[str, list[str]], list[str]]:
    """``lang -> texts`` of every evaluation language that has ``split`` documents.

    A language without any is left out with a warning (and returned in the second
    list) so that the other languages' results are still produced; if no language
    has texts, a clear error.
    """
    texts, skipped = {}, []
    for lang, path in corpora.items():
        try:
            texts[lang] = sample_texts(path, split, n_docs)
        except ValueError as err:
            log.warning("evaluation language %s left out: %s", lang, err)
            skipped.append(lang)
    if not texts:
        raise ValueError(f"no evaluation language has {split!r} documents: {skipped}")
    return texts, skipped


# -------------------------------------------------------------------- deactivation


def _is_conv1d(proj: nn.Module) -> bool:
    return type(proj).__name__ == "Conv1D"  # GPT-2: weight [in, out]


def _out_slices(proj: nn.Module, idx: torch.Tensor) -> list[tuple[torch.Tensor, tuple]]:
    """(tensor, index) pairs holding output channels ``idx`` of ``proj`` (weight and bias)."""
    w = (proj.weight, (slice(None), idx)) if _is_conv1d(proj) else (proj.weight, (idx,))
    bias = getattr(proj, "bias", None)
    return [w] + ([(bias, (idx,))] if isinstance(bias, torch.Tensor) else [])


def _in_slices(proj: nn.Module, idx: torch.Tensor) -> list[tuple[torch.Tensor, tuple]]:
    """(tensor, index) pairs holding input channels ``idx`` of ``proj`` (weight only)."""
    return [(proj.weight, (idx,))] if _is_conv1d(proj) else [(proj.weight, (slice(None), idx))]


def _unit(u: Sequence) -> Unit:
    layer, module, index = u
    return int(layer), str(module), int(index)


def _group_units(units: Iterable[Unit]) -> dict[tuple[int, str], list[int]]:
    groups: dict[tuple[int, str], set[int]] = {}
    for layer, module, index in map(_unit, units):
        if module not in MODULES:
            raise ValueError(f"deactivate: unknown module {module!r} (expected one of {MODULES})")
        groups.setdefault((layer, module), set()).add(index)
    return {key: sorted(v) for key, v in sorted(groups.items())}


def _plan(
    model: nn.Module, groups: Mapping[tuple[int, str], list[int]]
) -> list[tuple[str, nn.Module, torch.Tensor, list]]:
    """Per (layer, module): (hook kind, hooked module, channels, weight slices to zero)."""
    msites = mlp_sites(model) if any(m == "mlp" for _, m in groups) else []
    asites = attention_sites(model) if any(m != "mlp" for _, m in groups) else []
    plan = []
    for (layer, module), indices in groups.items():
        sites = msites if module == "mlp" else asites
        if not 0 <= layer < len(sites):
            raise ValueError(f"deactivate: layer {layer} out of range (model has {len(sites)})")
        if module == "mlp":
            site = msites[layer]
            size = site.size
        else:
            site = asites[layer]
            size = site.size(module)
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise ValueError(f"deactivate: layer {layer} {module} has {size} units, not {bad[:5]}")
        weight = (site.down if module == "mlp" else site.o).weight
        idx = torch.tensor(indices, dtype=torch.long, device=weight.device)
        if module == "mlp":
            up = _child(site.mlp, UP_NAMES) if site.gated else None
            slices = _out_slices(site.first, idx) + (_out_slices(up, idx) if up else [])
            plan.append(("pre", site.down, idx, slices + _in_slices(site.down, idx)))
        elif module == "o":
            plan.append(("pre", site.o, idx, _in_slices(site.o, idx)))
        else:
            proj = getattr(site, module)
            plan.append(("out", proj, idx, _out_slices(proj, idx)))
    return plan


def _zero_input(idx: torch.Tensor):
    def hook(_module, args):
        return (args[0].index_fill(-1, idx, 0), *args[1:])

    return hook


def _zero_output(idx: torch.Tensor):
    def hook(_module, _args, output):
        return output.index_fill(-1, idx, 0)

    return hook


@contextlib.contextmanager
def deactivated(model: nn.Module, neurons: Iterable[Unit], mode: str = "hooks") -> Iterator[None]:
    """Deactivate ``(layer, module, index)`` units of ``model`` while the context is active.

    ``mode="hooks"``: forward (pre-)hooks zero the units' channels (see the module
    docstring); ``mode="weights"``: the rows/columns (and biases) are zeroed in place
    and the saved values written back. Either way the model is restored on exit, also
    after an exception. Units are validated before anything is changed.
    """
    if mode not in MODES:
        raise ValueError(f"deactivate: mode must be one of {MODES}, got {mode!r}")
    plan = _plan(model, _group_units(neurons))
    handles: list = []
    saved: list[tuple[torch.Tensor, tuple, torch.Tensor]] = []
    try:
        if mode == "hooks":
            for kind, module, idx, _ in plan:
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(_zero_input(idx)))
                else:
                    handles.append(module.register_forward_hook(_zero_output(idx)))
        else:
            with torch.no_grad():
                targets = [s for *_, slices in plan for s in slices]
                saved = [(t, where, t[where].clone()) for t, where in targets]
                for t, where, _ in saved:
                    t[where] = 0
        yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for t, where, values in reversed(saved):
                t[where] = values


# ---------------------------------------------------------------------- unit sets


def units_from_table(table: pa.Table) -> list[Unit]:
    """The selected units ``(layer, module, index)`` of a selection table, in table order."""
    cols = [table[c].to_pylist() for c in ("layer", "module", "index", "selected")]
    return [(int(la), str(m), int(i)) for la, m, i, s in zip(*cols, strict=True) if s]


def all_units(model: nn.Module, modules: Iterable[str] = MODULES) -> list[Unit]:
    """Every unit of ``model`` of the given modules (the candidates of random selections)."""
    modules = list(dict.fromkeys(modules))
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise ValueError(f"all_units: unknown modules {unknown} (expected {MODULES})")
    units: list[Unit] = []
    if "mlp" in modules:
        units += [(s.layer, "mlp", i) for s in mlp_sites(model) for i in range(s.size)]
    attn = [m for m in modules if m != "mlp"]
    if attn:
        for s in attention_sites(model):
            units += [(s.layer, m, i) for m in attn for i in range(s.size(m))]
    return units


def random_like(selection: Iterable[Unit], candidates: Iterable[Unit], seed: int) -> list[Unit]:
    """An equal-count random set drawn from the same (layer, module) strata as ``selection``.

    For each (layer, module) of the selection with n distinct units, n units are drawn
    uniformly without replacement from the candidates of that stratum (the selected
    units themselves may be drawn: nothing else is excluded). Strata are visited in
    sorted order and candidates sorted, with one ``numpy.random.default_rng(seed)``,
    so the result depends only on the two sets and the seed. Returned sorted.
    """
    need: dict[tuple[int, str], int] = {}
    for layer, module, _ in set(selection):
        need[(layer, module)] = need.get((layer, module), 0) + 1
    pool: dict[tuple[int, str], set[int]] = {}
    for layer, module, index in candidates:
        pool.setdefault((layer, module), set()).add(index)
    rng = np.random.default_rng(seed)
    out: list[Unit] = []
    for key in sorted(need):
        cands = sorted(pool.get(key, ()))
        if len(cands) < need[key]:
            raise ValueError(
                f"random_like: stratum {key} has {len(cands)} candidates, {need[key]} needed"
            )
        picks = rng.choice(len(cands), size=need[key], replace=False)
        out += [(key[0], key[1], cands[j]) for j in picks]
    return sorted(out)


# ------------------------------------------------------------------ ablation matrix


def ablation_matrix(
    model: nn.Module,
    tokenizer,
    selections: Mapping[str, Sequence[Unit]],
    eval_texts: Mapping[str, Sequence[str]],
    n_random: int = 3,
    seed: int = 0,
    mode: str = "hooks",
    **ppl_kwargs,
) -> pa.Table:
    """Perplexity of every (target language's ablation, evaluation language) pair.

    Rows (columns ``MATRIX_COLUMNS``): per evaluation language one ``base`` row
    (target_lang null, n_units 0); per target language and evaluation language one
    ``selected`` row and ``n_random`` ``random`` rows (seeds ``seed, seed+1, ...``,
    :func:`random_like`); ``seed`` is -1 for non-random rows. The base perplexity is
    computed once per evaluation language. An empty selection gives rows with n_units 0
    and ppl = base_ppl (and a warning). ``ppl_kwargs`` go to :func:`perplexity`.
    """
    empty = [lang for lang, texts in eval_texts.items() if not texts]
    if empty or not eval_texts:
        raise ValueError(f"ablation: evaluation languages without texts: {empty or 'all'}")
    selections = {t: sorted({_unit(u) for u in units}) for t, units in selections.items()}
    for units in selections.values():  # validate every unit before computing anything
        _plan(model, _group_units(units))
    rows: dict[str, list] = {c: [] for c in MATRIX_COLUMNS}

    def add(setting, target, lang, n_units, ppl, base, row_seed=-1) -> None:
        for col, value in zip(
            MATRIX_COLUMNS, (setting, target, lang, n_units, ppl, base, row_seed), strict=True
        ):
            rows[col].append(value)

    base = {}
    for lang, texts in eval_texts.items():
        base[lang] = perplexity(model, tokenizer, texts, **ppl_kwargs).ppl
        add("base", None, lang, 0, base[lang], base[lang])
        log.info("ablation: base PPL %s = %.4g", lang, base[lang])
    used = sorted({m for units in selections.values() for _, m, _ in units})
    candidates = all_units(model, used) if used and n_random > 0 else []
    for target, units in selections.items():
        settings = [("selected", units, -1)]
        settings += [
            ("random", random_like(units, candidates, seed + r) if units else [], seed + r)
            for r in range(n_random)
        ]
        if not units:
            log.warning("ablation: the selection of %r is empty; its rows repeat the base", target)
        for setting, chosen, row_seed in settings:
            if not chosen:
                for lang in eval_texts:
                    add(setting, target, lang, 0, base[lang], base[lang], row_seed)
                continue
            with deactivated(model, chosen, mode=mode):
                for lang, texts in eval_texts.items():
                    ppl = perplexity(model, tokenizer, texts, **ppl_kwargs).ppl
                    add(setting, target, lang, len(chosen), ppl, base[lang], row_seed)
                    log.info(
                        "ablation: %s %s (seed %d) on %s: PPL %.4g (base %.4g)",
                        setting,
                        target,
                        row_seed,
                        lang,
                        ppl,
                        base[lang],
                    )
    return pa.table(
        {
            "setting": pa.array(rows["setting"], pa.string()),
            "target_lang": pa.array(rows["target_lang"], pa.string()),
            "eval_lang": pa.array(rows["eval_lang"], pa.string()),
            "n_units": pa.array(rows["n_units"], pa.int64()),
            "ppl": pa.array(rows["ppl"], pa.float64()),
            "base_ppl": pa.array(rows["base_ppl"], pa.float64()),
            "seed": pa.array(rows["seed"], pa.int64()),
        }
    )

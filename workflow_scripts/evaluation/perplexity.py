"""Token-weighted perplexity on held-out text (docs/methods.md, "Evaluation").

:func:`perplexity` runs the trunk on right-padded, length-sorted batches and the LM
head only on the valid positions, in bounded chunks of logits (a plain linear head by
slices of the vocabulary with a running log-sum-exp, so its weight is read once per
batch; logits of a whole batch would not fit in memory for a 262k-token vocabulary),
with Gemma's final logit soft-capping. With ``max_tokens``
every setting is evaluated on exactly the same predicted tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.models.anatomy import lm_head, logit_softcap
from workflow_scripts.models.padding import pad_id, right_padded
from workflow_scripts.models.placement import input_device

log = logging.getLogger(__name__)

MAX_LOGITS = 2**24  # logits elements per cross-entropy chunk (64 MB in float32)
VOCAB_SLICE = 8192  # narrowest vocabulary slice of a plain head (rows per chunk: 2048)
LOGITS_SLICE = 2**21  # logits of one vocabulary slice (8 MB: stays in cache for its sums)


@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted perplexity ``exp(nll_sum / n_tokens)`` over the predicted tokens;
    ``doc_nll`` / ``doc_tokens``: the summed NLL and predicted tokens of each evaluated
    document (the texts with a token to predict, in text order), which the findings
    resample for their bootstrap intervals."""

    ppl: float
    nll_sum: float
    n_tokens: int
    doc_nll: tuple[float, ...] = ()
    doc_tokens: tuple[int, ...] = ()


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


def chunked_nll(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    cap: float | None,
    rows: torch.Tensor | None = None,
    n_rows: int = 1,
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` ``[N, V]``, a bounded number of logits at a
    time, in float32 (float64 sums), as a tensor on the head's device: no host sync.
    With ``rows`` (``[N]``, the sequence of each position) the sums per sequence
    (``[n_rows]``), else one 0-d sum. A plain ``nn.Linear`` head is read in slices of
    the vocabulary (:func:`_nll_by_vocab`: its weight is read once per 2,048
    positions, not once per ``MAX_LOGITS / V``); other heads (offloaded by accelerate,
    quantized) are called on chunks of positions."""
    plain = isinstance(head, nn.Linear) and not hasattr(head, "_hf_hook")
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    chunk = max(1, MAX_LOGITS // (min(VOCAB_SLICE, vocab) if plain else vocab))
    total = None
    for i in range(0, hidden.shape[0], chunk):
        target = targets[i : i + chunk].to(hidden.device)
        if plain:
            nll = _nll_by_vocab(head, hidden[i : i + chunk], target, cap)
        else:
            logits = head(hidden[i : i + chunk])
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            nll = F.cross_entropy(logits, target.to(logits.device), reduction="none").double()
        if total is None:
            total = torch.zeros(n_rows, dtype=torch.float64, device=nll.device)
        if rows is None:
            total += nll.sum()
        else:
            total.index_add_(0, rows[i : i + chunk].to(nll.device), nll)
    return total[0] if rows is None else total


def _nll_by_vocab(
    head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None
) -> torch.Tensor:
    """``[N]`` float64 NLL of ``targets`` under ``head(hidden)``, the logits formed one
    slice of ``LOGITS_SLICE / N`` vocabulary rows at a time with a running log-sum-exp
    (``cross_entropy``'s value; float32 work for half-precision heads; the weight is
    read once)."""
    n, vocab = hidden.shape[0], head.weight.shape[0]
    width = max(1, min(MAX_LOGITS, LOGITS_SLICE) // max(1, n))
    work = torch.promote_types(head.weight.dtype, torch.float32)  # float32 or float64
    lse = hidden.new_full((n,), -math.inf, dtype=work)
    picked = torch.zeros_like(lse)
    for v0 in range(0, vocab, width):
        v1 = min(v0 + width, vocab)
        bias = None if head.bias is None else head.bias[v0:v1]
        logits = F.linear(hidden, head.weight[v0:v1], bias).to(work)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        lse = torch.logaddexp(lse, torch.logsumexp(logits, -1))
        inside = (targets >= v0) & (targets < v1)
        local = (targets - v0).clamp(0, v1 - v0 - 1)
        picked = torch.where(inside, logits.gather(1, local[:, None])[:, 0], picked)
    return lse.double() - picked.double()


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
    hidden states of the valid positions, in chunks; the NLL is summed per document.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"perplexity: max_tokens must be >= 1, got {max_tokens}")
    docs = _budgeted_ids(tokenizer, texts, max_length, max_tokens)
    if not docs:
        raise ValueError("perplexity: no text has a token to predict")
    pad = pad_id(tokenizer)
    trunk, head, cap = model.base_model, lm_head(model), logit_softcap(model)
    device = input_device(model)
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))
        doc_nll = [0.0] * len(docs)
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            input_ids, mask = right_padded([docs[i] for i in picked], pad, device)
            hidden = trunk(input_ids=input_ids, attention_mask=mask, use_cache=False)[0]
            valid = mask[:, 1:].bool()  # position t predicts token t+1
            h = hidden[:, :-1][valid.to(hidden.device)].contiguous()
            rows = torch.arange(len(picked), device=valid.device)[:, None].expand_as(valid)[valid]
            nll = chunked_nll(head, h, input_ids[:, 1:][valid], cap, rows, len(picked))
            for i, value in zip(picked, nll.tolist(), strict=True):
                doc_nll[i] = value
    finally:
        model.train(was_training)
    doc_tokens = tuple(len(ids) - 1 for ids in docs)
    nll_sum, n_tokens = math.fsum(doc_nll), sum(doc_tokens)
    return PerplexityResult(
        math.exp(nll_sum / n_tokens), nll_sum, n_tokens, tuple(doc_nll), doc_tokens
    )


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

"""Logit lens (Zhao et al. 2024): which language does each layer "think" in?

The LM head (``model.get_output_embeddings()``) is applied to the output of
every decoder layer at every non-padding position; the top-k tokens of each
position are classified by language (:mod:`workflow_scripts.langid`) into
English, the input language, or ``other`` (any other language, or no language:
punctuation, digits, word pieces the identifier cannot decide, special tokens).
The result is, per layer, the share of each category among all top-k tokens.

- **Hidden states.** Forward hooks on the decoder layers of the trunk
  (``model.base_model``, no LM head over the full sequence) take each layer's
  output, the residual stream. Layer ``i`` is the output of decoder layer
  ``i``: ``hidden_states[i + 1]`` of ``output_hidden_states=True`` for every
  layer but the last, where ``transformers`` returns the state *after* the
  final norm; the hook gives the raw state there too.
- **final_norm.** ``False`` (the paper): the head is applied to the raw hidden
  state. ``True`` (the usual logit lens): the model's own final norm module
  first (:func:`final_norm_module`: ``base_model.norm`` for Llama, Qwen2,
  Mistral and Gemma 3, whose RMSNorm scales by ``1 + w`` in float32;
  ``base_model.ln_f`` for GPT-2 and Bloom). The last layer with the final norm
  then gives exactly the model's next-token top-k.
- **Gemma 3.** Its embedding scaling (``* sqrt(hidden)``) happens inside the
  input embedding module only; the tied head multiplies by the unscaled
  matrix, as the model itself does, so nothing is rescaled here. Final logit
  softcapping (``cap * tanh(logits / cap)``, in configs that set it) is
  monotone and leaves the top-k unchanged, so it is not applied.
- **Memory.** One layer at a time inside its hook: only the non-padding rows,
  in chunks of positions whose logits stay under ``max_chunk_bytes`` (256 MB:
  256 positions for Gemma's 262,144-token vocabulary); only the top-k ids are
  kept, reduced at once into counts per (layer, category). Each distinct token
  is classified once (the classifier caches per token id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from workflow_scripts.models.anatomy import decoder_layers, final_norm_module, lm_head
from workflow_scripts.models.padding import pad_id, right_padded
from workflow_scripts.models.placement import OnDevices, input_device

log = logging.getLogger(__name__)

OTHER = "other"
MAX_CHUNK_BYTES = 256 * 2**20


class TokenClassifier(Protocol):
    """What :func:`logit_lens` needs from a language identifier."""

    def classify_ids(self, tokenizer: Any, ids: Sequence[int]) -> list[str | None]: ...


def categories_for(lang: str) -> list[str]:
    """Token categories of input language ``lang``: ``en``, ``lang`` (if not en), ``other``."""
    return ["en", OTHER] if lang == "en" else ["en", lang, OTHER]


def _chunk_rows(vocab_size: int, dtype: torch.dtype, max_chunk_bytes: int) -> int:
    return max(1, max_chunk_bytes // (vocab_size * dtype.itemsize))


def head_top_k(
    hidden: torch.Tensor,
    head: nn.Module,
    top_k: int,
    norm: nn.Module | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """Top-k token ids ``[N, k]`` of ``head(norm(hidden))`` for ``hidden[N, H]``, in chunks."""
    vocab = head.weight.shape[0]
    if not 0 < top_k <= vocab:
        raise ValueError(f"top_k must be in 1..{vocab}, got {top_k}")
    rows = _chunk_rows(vocab, head.weight.dtype, max_chunk_bytes)
    out = []
    for start in range(0, hidden.shape[0], rows):
        h = hidden[start : start + rows]
        if norm is not None:
            h = norm(h)
        out.append(head(h).topk(top_k, dim=-1).indices)
    if not out:
        return torch.empty(0, top_k, dtype=torch.long, device=hidden.device)
    return torch.cat(out)


@torch.inference_mode()
def lens_top_k(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    top_k: int = 5,
    final_norm: bool = False,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> list[torch.Tensor]:
    """Per decoder layer, the top-k ids ``[N, k]`` at the N non-padding positions.

    Rows are the positions where ``attention_mask`` is 1, batch-major (as
    ``tensor[mask]`` orders them). Runs the trunk only, with hooks; inputs go to the
    embedding's device, each layer's ids stay on the device of its head computation.
    """
    device = input_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    layers = decoder_layers(model)
    head = lm_head(model)
    norm = final_norm_module(model) if final_norm else None
    mask = OnDevices(attention_mask.bool())
    tops: list[torch.Tensor | None] = [None] * len(layers)

    def hook(layer: int):
        def fn(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            rows = hidden[mask(hidden.device)]
            tops[layer] = head_top_k(rows, head, top_k, norm, max_chunk_bytes)

        return fn

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(layers)]
    try:
        model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, t in enumerate(tops) if t is None]
    if missing:
        raise RuntimeError(f"decoder layers {missing} did not run during the forward pass")
    return tops  # type: ignore[return-value]


def encode_right_padded(
    tokenizer, texts: Sequence[str], max_length: int, add_special_tokens: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``texts``, truncated and padded on the right.

    Padded by hand (pad id: the pad, else EOS, else 0 token; padding positions
    are masked and, being after the text, never seen by a causal model), so the
    tokenizer needs no pad token and is never modified.
    """
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        add_special_tokens=add_special_tokens,
    )
    return right_padded(enc["input_ids"], pad_id(tokenizer))


def _category_counts(
    tops: Sequence[torch.Tensor],
    tokenizer,
    classifier: TokenClassifier,
    index: dict[str | None, int],
    other: int,
) -> np.ndarray:
    """``[layers, categories]`` counts of one batch's top-k ids, one copy to the host.

    Each distinct id of the batch is classified once (None and unlisted codes: other).
    """
    device = tops[0].device
    ids = torch.stack([t.to(device) for t in tops])  # [L, N, k]
    unique, inverse = torch.unique(ids, return_inverse=True)
    langs = classifier.classify_ids(tokenizer, unique.tolist())
    category = torch.tensor(
        [index.get(code, other) for code in langs], dtype=torch.long, device=device
    )
    per_layer = category[inverse].reshape(len(tops), -1)
    counts = torch.zeros(len(tops), len(index), dtype=torch.int64, device=device)
    counts.scatter_add_(1, per_layer, torch.ones_like(per_layer))
    return counts.cpu().numpy()


def logit_lens(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    lang: str,
    classifier: TokenClassifier,
    top_k: int = 5,
    max_length: int = 128,
    batch_size: int = 4,
    final_norm: bool = False,
    add_special_tokens: bool = True,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> pa.Table:
    """Per layer, the share of the top-k next-token predictions in each language category.

    Columns: ``layer`` (int32, 0..L-1: output of decoder layer i),
    ``lang_of_token`` (``en``, ``lang`` unless it is en, ``other``), ``count``
    (int64: top-k tokens of that category), ``ratio`` (float64, sums to 1 per
    layer) and ``n_tokens`` (int64: top-k tokens counted in the layer,
    ``top_k`` x non-padding positions of all texts, each truncated to
    ``max_length`` tokens). Every category has a row in every layer.
    """
    if not texts:
        raise ValueError("logit lens: no texts")
    categories = categories_for(lang)
    index: dict[str | None, int] = {c: i for i, c in enumerate(categories)}
    other = index[OTHER]
    n_layers = len(decoder_layers(model))
    counts = np.zeros((n_layers, len(categories)), dtype=np.int64)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:  # never index past a learned position table (GPT-2)
        max_length = min(max_length, limit)
    order = sorted(
        range(len(texts)), key=lambda i: len(texts[i])
    )  # sorted by length: little padding (what matters on CPU)
    n_positions = 0
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        input_ids, attention_mask = encode_right_padded(
            tokenizer, batch, max_length, add_special_tokens
        )
        if attention_mask.sum() == 0:
            continue
        n_positions += int(attention_mask.sum())
        tops = lens_top_k(model, input_ids, attention_mask, top_k, final_norm, max_chunk_bytes)
        counts += _category_counts(tops, tokenizer, classifier, index, other)
        log.info(
            "logit lens %s: %d/%d texts", lang, min(start + batch_size, len(texts)), len(texts)
        )
    if n_positions == 0:
        raise ValueError("logit lens: the texts have no tokens")
    n_tokens = counts.sum(axis=1)
    return pa.table(
        {
            "layer": pa.array(np.repeat(np.arange(n_layers), len(categories)), pa.int32()),
            "lang_of_token": pa.array(categories * n_layers, pa.string()),
            "count": pa.array(counts.ravel(), pa.int64()),
            "ratio": pa.array((counts / n_tokens[:, None]).ravel(), pa.float64()),
            "n_tokens": pa.array(np.repeat(n_tokens, len(categories)), pa.int64()),
        }
    )


def predicted_language_share(table: pa.Table) -> dict[str, np.ndarray]:
    """Category -> ratio per layer (index = layer), from a :func:`logit_lens` table."""
    layers = table.column("layer").to_numpy()
    cats = table.column("lang_of_token").to_pylist()
    ratios = table.column("ratio").to_numpy()
    n_layers = int(layers.max()) + 1 if len(layers) else 0
    out: dict[str, np.ndarray] = {}
    for layer, cat, ratio in zip(layers, cats, ratios, strict=True):
        out.setdefault(cat, np.zeros(n_layers))[layer] = ratio
    return out


def corpus_logit_lens(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    lang: str,
    languages: Sequence[str],
    top_k: int = 5,
    max_length: int = 128,
    batch_size: int = 4,
    final_norm: bool = False,
    split: str = "eval",
) -> tuple[pa.Table, dict[str, Any]]:
    """:func:`logit_lens` of ``texts`` of language ``lang`` with the real language identifier;
    returns the table and its metadata.

    ``languages``: the classifier's languages (all languages of the run, so a token of
    another studied language counts as ``other``, not as a guess); ``split``: the corpus
    split the texts come from (recorded only).
    """
    from workflow_scripts.langid import TokenLanguageClassifier

    classifier = TokenLanguageClassifier(sorted({*languages, lang, "en"}))
    table = logit_lens(
        model, tokenizer, texts, lang, classifier, top_k, max_length, batch_size, final_norm
    )
    meta = {
        "lang": lang,
        "languages": sorted(languages),
        "n_texts": len(texts),
        "split": split,
        "top_k": top_k,
        "max_length": max_length,
        "final_norm": final_norm,
    }
    return table, meta

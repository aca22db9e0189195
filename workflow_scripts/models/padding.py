"""Token ids shared by every computation: right-padded batches, pad and stop tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_id(tokenizer) -> int:
    """The id padded positions get: the pad token, else EOS, else 0.

    Padded positions are masked (and come after the text), so the value never
    changes a result; the tokenizer is not modified.
    """
    for pid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(pid, int):
            return pid
    return 0


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's and the generation config's EOS ids, sorted."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for eos in (tokenizer.eos_token_id, getattr(gen, "eos_token_id", None)):
        ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
    return sorted(ids)


def right_padded(
    seqs: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu", left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[len(seqs), longest]``, the sequences left-aligned
    (``left=True``: right-aligned, padded on the left, as generation wants: every prompt
    ends at the same column), built on the host and moved to ``device`` in one copy each."""
    width = max((len(s) for s in seqs), default=0)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long, device="cpu")
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long, device="cpu")
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[row, cols] = torch.tensor(seq, dtype=torch.long, device="cpu")
        attention_mask[row, cols] = 1
    return input_ids.to(device), attention_mask.to(device)


def tokenize_right_padded(tokenizer, texts: Sequence[str], max_length: int):
    """``tokenizer(texts)`` as PyTorch tensors, right-padded and truncated to
    ``max_length`` (positions then equal those of each unpadded document)."""
    return tokenizer(
        list(texts),
        return_tensors="pt",
        padding=True,
        padding_side="right",
        truncation=True,
        max_length=max_length,
    )

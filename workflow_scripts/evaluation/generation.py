"""Greedy generation and how generated text is scored (docs/methods.md, "Output-language
steering and generation scoring").

- :func:`greedy_continuations`: left-padded batches, greedy decoding, the new token ids
  of each prompt up to (not including) the first stop token;
- :func:`continuation_nll`: the negative log-likelihood of each continuation given its
  prompt under the model as it is (call it outside any intervention: fluency is judged
  by the unmodified model); the LM head only on the continuation's positions;
- :func:`degenerate`: the most frequent n-gram covers over half of the tokens;
- :func:`chrf`: sacrebleu's sentence chrF (0-100);
- :func:`language_of`: the offline language identifier's answer, ``None`` for a text with
  fewer than ``min_letters`` letters (too short counts as a failure).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn

from workflow_scripts.evaluation.perplexity import MAX_LOGITS, VOCAB_SLICE, chunked_nll
from workflow_scripts.models.anatomy import lm_head, logit_softcap
from workflow_scripts.models.padding import pad_id, right_padded, stop_token_ids
from workflow_scripts.models.placement import input_device

# continuation positions scored per LM-head call: chunked_nll's chunk, one weight read each
HEAD_POSITIONS = MAX_LOGITS // VOCAB_SLICE


def _cut(ids: Sequence[int], stops: set[int]) -> list[int]:
    out = []
    for t in ids:
        if t in stops:
            break
        out.append(int(t))
    return out


@torch.inference_mode()
def greedy_continuations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    max_length: int = 256,
    stop_strings: Sequence[str] = (),
    add_special_tokens: bool = True,
) -> tuple[list[list[int]], list[list[int]]]:
    """``(prompt ids, new ids)`` per prompt (input order): greedy, left-padded batches of
    the prompts in the given order (so the same prompts give the same batches), prompts
    truncated to ``max_length`` tokens, continuations cut at the first stop token.
    ``stop_strings`` also end a row (transformers' ``stop_strings``; the token that
    completes the string is kept: cut the decoded text at it). ``add_special_tokens=False``
    for prompts that carry them already (chat-template output)."""
    if not prompts:
        raise ValueError("generation: no prompts")
    stops = stop_token_ids(model, tokenizer)
    stop_set = set(stops)
    pad = pad_id(tokenizer)
    device = input_device(model)
    was_training = model.training
    model.eval()
    prompt_ids, new_ids = [], []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            enc = tokenizer(
                batch, truncation=True, max_length=max_length, add_special_tokens=add_special_tokens
            )["input_ids"]
            ids, mask = right_padded(enc, pad, device, left=True)
            width = ids.shape[1]
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=stops or None,
                **(
                    {"stop_strings": list(stop_strings), "tokenizer": tokenizer}
                    if stop_strings
                    else {}
                ),
            )
            for row, e in enumerate(enc):
                prompt_ids.append(list(e))
                new = _cut(out[row, width:].tolist(), stop_set)
                while stop_strings and new and new[-1] == pad:  # a row ended by a stop string
                    new.pop()
                new_ids.append(new)
    finally:
        model.train(was_training)
    return prompt_ids, new_ids


@torch.inference_mode()
def continuation_nll(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    new_ids: Sequence[Sequence[int]],
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """``(summed NLL, n tokens)`` of each continuation given its prompt (teacher forcing);
    ``(nan, 0)`` for an empty continuation.

    The trunk runs ``batch_size`` sequences at a time; the continuations' hidden states
    are gathered over batches and scored by the LM head together, at least
    ``HEAD_POSITIONS`` positions per call, so the head's weight (Gemma: 262k x 640) is
    read once per call rather than once per sequence.
    """
    pad = 0
    device = input_device(model)
    trunk, head, cap = model.base_model, lm_head(model), logit_softcap(model)
    out: list[tuple[float, int]] = [(math.nan, 0)] * len(prompt_ids)
    todo = [i for i, n in enumerate(new_ids) if n]
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (index, hidden, targets)

    def score_pending() -> None:
        hidden = torch.cat([h for _, h, _ in pending])
        targets = torch.cat([t for *_, t in pending])
        sizes = torch.tensor([h.shape[0] for _, h, _ in pending], device=hidden.device)
        rows = torch.repeat_interleave(torch.arange(len(pending), device=hidden.device), sizes)
        sums = chunked_nll(head, hidden, targets, cap, rows, len(pending)).tolist()
        for (i, h, _), total in zip(pending, sums, strict=True):
            out[i] = (total, h.shape[0])
        pending.clear()

    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            seqs = [list(prompt_ids[i]) + list(new_ids[i]) for i in rows]
            input_ids, mask = right_padded(seqs, pad, device)
            hidden = trunk(input_ids=input_ids, attention_mask=mask, use_cache=False)[0]
            for r, i in enumerate(rows):
                p, n = len(prompt_ids[i]), len(new_ids[i])
                # position t predicts t + 1; a copy, so the batch's hidden states are freed
                pending.append((i, hidden[r, p - 1 : p + n - 1].clone(), input_ids[r, p : p + n]))
            if sum(h.shape[0] for _, h, _ in pending) >= HEAD_POSITIONS:
                score_pending()
        if pending:
            score_pending()
    finally:
        model.train(was_training)
    return out


def degenerate(ids: Sequence[int], n: int = 3, share: float = 0.5) -> bool:
    """Whether the most frequent ``n``-gram's occurrences cover over ``share`` of ``ids``."""
    if len(ids) < n:
        return False
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    top, _ = Counter(grams).most_common(1)[0]
    covered = set()
    for i, g in enumerate(grams):
        if g == top:
            covered.update(range(i, i + n))
    return len(covered) / len(ids) > share


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(hypothesis, [reference]).score)


def language_of(classifier, text: str, min_letters: int = 5) -> str | None:
    """The classifier's language of ``text``; None if it has fewer than ``min_letters``
    letters (a too-short generation identifies no language)."""
    if sum(ch.isalpha() for ch in text) < min_letters:
        return None
    return classifier.classify(text)

"""The inhibited share of MLP neurons during a task's generations, per item (Mu et al.).

The positions are those activation counting records with ``positions: generated``: the
prompt's last token and every generated token that was fed back (``n`` new tokens: ``n``
positions). They are recomputed teacher-forced over prompt + generation with the
counting stage's hooks (:func:`~workflow_scripts.models.hooks.activation_hooks`), one
trunk pass per batch, so the share is per item (for intervals over items) and the
generation itself runs without hooks. Dense MLP layers only: a mixture-of-experts layer
is left out of the mean (its neurons see only routed positions).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from workflow_scripts.models.anatomy import MLPSite, ffn_sites
from workflow_scripts.models.hooks import activation_hooks
from workflow_scripts.models.padding import right_padded
from workflow_scripts.models.placement import input_device

log = logging.getLogger(__name__)


@torch.inference_mode()
def inhibited_shares(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    new_ids: Sequence[Sequence[int]],
    batch_size: int = 8,
) -> list[float]:
    """Per item: the mean over dense MLP layers of the share of neurons with activation
    ``<= 0`` over the item's recorded positions; NaN for an empty generation."""
    sites = [s for s in ffn_sites(model) if isinstance(s, MLPSite)]
    if len(sites) < len(ffn_sites(model)):
        log.warning("inhibited shares: mixture-of-experts layers left out")
    out = [math.nan] * len(prompt_ids)
    todo = [i for i, n in enumerate(new_ids) if n]
    device = input_device(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            seqs = [list(prompt_ids[i]) + list(new_ids[i])[:-1] for i in rows]
            ids, mask = right_padded(seqs, 0, device)
            keep = torch.zeros_like(mask, dtype=torch.bool)
            for r, i in enumerate(rows):
                p, n = len(prompt_ids[i]), len(new_ids[i])
                keep[r, p - 1 : p - 1 + n] = True
            sums: dict[int, torch.Tensor] = {}

            def record(layer, acts, *_extra, keep=keep, sums=sums):
                if acts.dim() != 3:
                    return
                share = (acts <= 0).float().mean(-1)  # [B, T]
                k = keep.to(share.device)
                sums[layer] = ((share * k).sum(-1) / k.sum(-1)).double().cpu()

            with activation_hooks(sites, record):
                model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            per_row = torch.stack([sums[s.layer] for s in sites]).mean(0)
            for r, i in enumerate(rows):
                out[i] = float(per_row[r])
    finally:
        model.train(was_training)
    return out

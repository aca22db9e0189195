"""Per-element parameter scores of one language, Zhang et al. 2024 (docs/methods.md, "Regions").

Every element of every parameter *inside the transformer layers* (norm vectors and
biases included; embeddings, final norm and LM head left out) gets a score:

- ``delta`` (the slides): ``|theta_after - theta_before|`` after a short continued
  pretraining on the language (AdamW, :func:`delta_scores`);
- ``grad_x_param`` (the paper's released code): ``|sum over batches of grad * theta|``
  without optimizer steps (:func:`grad_x_param_scores`).

Documents longer than ``max_length`` tokens are dropped, as in the paper. Scores are
dense float32 safetensors (:func:`write_scores`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from workflow_scripts.io import atomic_path
from workflow_scripts.models.anatomy import region_parameters
from workflow_scripts.models.placement import input_device
from workflow_scripts.training.checkpoints import TrainingCheckpoint
from workflow_scripts.training.loop import collate, continued_pretraining

log = logging.getLogger(__name__)

SCORES = ("delta", "grad_x_param")
IMPORTANT_END = {"delta": "bottom", "grad_x_param": "top"}


def delta_scores(
    model: nn.Module,
    docs: Sequence[list[int]],
    settings: Mapping[str, Any],
    pad_id: int,
    checkpoint: TrainingCheckpoint | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``|theta_after - theta_before|`` of the layer parameters after continued pretraining.

    ``settings``: steps, batch_size, lr, weight_decay, trainable, seed, engine
    (``torch`` or ``deepspeed``). The model is trained in place.
    """
    before = {n: p.detach().clone() for n, p in region_parameters(model).items()}
    info = continued_pretraining(model, docs, settings, pad_id, checkpoint)
    after = region_parameters(model)
    return {n: (after[n].detach() - before[n]).abs().float() for n in before}, info


def grad_x_param_scores(
    model: nn.Module,
    docs: Sequence[list[int]],
    settings: Mapping[str, Any],
    pad_id: int,
    checkpoint: TrainingCheckpoint | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``|sum over batches of grad * theta|`` per layer-parameter element, no optimizer step.

    One pass over ``docs`` in batches of ``batch_size`` documents of similar length
    (loss = mean token cross-entropy of the batch). Accumulators are checkpointed every
    ``checkpoint.every`` batches.
    """
    params = region_parameters(model)
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    start, extra = checkpoint.restore(None, None) if checkpoint else (0, {})
    if start:  # checkpoints are read to the host: back to each parameter's device
        acc = {n: a.to(params[n].device) for n, a in extra["acc"].items()}
    bs = settings["batch_size"]
    docs = sorted(docs, key=len)  # similar lengths per batch: little padding (CPU time)
    n_batches = math.ceil(len(docs) / bs)
    device = input_device(model)
    model.eval()  # no dropout: the importance of the model as it is
    t0 = time.time()
    for b in range(start, n_batches):
        batch = {k: v.to(device) for k, v in collate(docs[b * bs : (b + 1) * bs], pad_id).items()}
        model(**batch, use_cache=False).loss.backward()
        with torch.no_grad():
            for n, p in params.items():
                acc[n] += (p.grad * p).float()
                p.grad = None
        if checkpoint:
            checkpoint.maybe_save(b + 1, None, None, extra={"acc": acc})
        log.info("grad x param: batch %d/%d", b + 1, n_batches)
    return {n: a.abs() for n, a in acc.items()}, {
        "batches": n_batches,
        "resumed_at_step": start,
        "train_seconds": time.time() - t0,
    }


def write_scores(
    scores: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any]
) -> None:
    """Dense per-element scores as safetensors, written atomically."""
    tensors = {n: t.detach().to(torch.float32).contiguous() for n, t in scores.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def read_score_names(path: str | Path) -> list[str]:
    """Tensor names stored in a scores file (clear error if it is not one)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return sorted(f.keys())
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors scores file ({err})") from err

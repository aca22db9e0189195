"""Memory a model job needs, estimated before it computes, and a fast, clear failure if it
cannot fit (docs/configuration.md, "Placement").

The estimate is an upper bound of what one batch keeps alive at once, from the model's
config: per token and layer the residual stream, q/k/v/o and the MLP's gate, up and
activation (``6 * hidden + 3 * intermediate`` values in the model's dtype), the
attention probabilities of one layer in float32 (``heads * T^2`` per sequence), the
LM head's logits chunk, and per stage what it adds: the KV cache of generation, PLND's
per-token importances (float32) and Q/K chunks, the gradients, AdamW state and saved
activations of training. Accumulators (``[layers, neurons]`` counters) are added exactly.
The free memory is ``torch.cuda.mem_get_info`` on a GPU, ``MemAvailable`` on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from workflow_scripts.models.anatomy import config_sizes
from workflow_scripts.models.placement import as_device, input_device

log = logging.getLogger(__name__)

GIB = 2**30
STAGES = ("actcount", "lape", "experts", "plnd", "logit_lens", "ablation", "regions", "tiny")
STAGES += ("unit_stats", "steering", "tasks")
PLND_QK_ELEMENTS = 2**24  # plnd.qk_importance's chunk bound (max_elements)
LOGITS_ELEMENTS = 2**24  # perplexity's cross-entropy chunk (MAX_LOGITS)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters (offloaded ones included)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def estimate_bytes(
    model: nn.Module,
    stage: str,
    batch_size: int,
    seq_len: int,
    new_tokens: int = 0,
    optimizer: bool = True,
) -> int:
    """Upper estimate of the bytes one batch of ``stage`` keeps alive (see module doc).

    Training stages (``regions``, ``tiny``) add gradients and float32 scores, and with
    ``optimizer`` (delta scores, freeze training; not grad x param) AdamW's two moments
    and the copy of the weights the deltas are taken from.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    d = config_sizes(model.config)
    itemsize = next(model.parameters()).element_size()
    b, t = batch_size, seq_len + new_tokens
    per_token = (6 * d["hidden"] + 3 * d["inter"]) * itemsize
    total = b * t * per_token + b * d["heads"] * t * t * 4 * 2
    total += min(b * t * d["vocab"], LOGITS_ELEMENTS) * 4 * 2
    width = d["inter"] + 2 * d["heads"] * d["head_dim"] + 2 * d["kv_heads"] * d["head_dim"]
    if stage in ("actcount", "lape", "experts", "steering", "tasks"):
        total += (
            d["layers"] * d["inter"] * 8
            + 2 * d["layers"] * b * t * d["kv_heads"] * d["head_dim"] * itemsize
        )
    elif stage == "plnd":
        total += 2 * b * t * width * 4 + 3 * PLND_QK_ELEMENTS * 4
        total += d["layers"] * width * 16  # frequency and score sums per neuron
    elif stage == "unit_stats":  # float64 sums: 4 per unit, 1 per hidden dimension and layer
        total += d["layers"] * (width * 32 + d["hidden"] * 8) + b * t * width * 8
    elif stage == "logit_lens":
        total += b * t * d["hidden"] * 4
    elif stage in ("regions", "tiny"):
        params = sum(p.numel() for p in model.parameters())
        total += params * (itemsize + 4)  # gradients, float32 scores
        if optimizer:
            total += params * 3 * itemsize  # AdamW's moments, the weights before training
        total += b * t * d["layers"] * (16 * d["hidden"] + 4 * d["inter"]) * itemsize
        total += b * t * d["vocab"] * 4 * 2
    return int(total)


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free bytes, or the host's ``MemAvailable``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(
    model: nn.Module,
    stage: str,
    batch_size: int,
    seq_len: int,
    new_tokens: int = 0,
    setting: str | None = None,
    free: int | None = None,
    optimizer: bool = True,
) -> int:
    """Log parameters, the batch's estimate and the free memory; raise if it cannot fit.

    ``setting``: the config key to name in the error (default ``<stage>.batch_size``).
    Returns the estimate in bytes. With a ``device_map`` the smallest free memory of
    the devices that hold layers is used.
    """
    need = estimate_bytes(model, stage, batch_size, seq_len, new_tokens, optimizer)
    devices = _devices(model)
    if free is None:
        free = min(free_bytes(d) for d in devices)
    where = ", ".join(str(d) for d in devices)
    log.info(
        "memory: parameters %.2f GiB; %s batch of %d x %d tokens needs about %.2f GiB; "
        "%.2f GiB free on %s",
        parameter_bytes(model) / GIB,
        stage,
        batch_size,
        seq_len + new_tokens,
        need / GIB,
        free / GIB,
        where,
    )
    if need > free:
        raise MemoryError(
            f"{stage}: a batch of {batch_size} x {seq_len + new_tokens} tokens needs about "
            f"{need / GIB:.1f} GiB but {where} has {free / GIB:.1f} GiB free; lower "
            f"{setting or stage + '.batch_size'} (or max_length), or give the job more memory"
        )
    return need


def _devices(model: nn.Module) -> list[torch.device]:
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return [input_device(model)]
    out = []
    for where in device_map.values():
        if where == "disk":
            continue
        device = as_device(where)
        if device not in out:
            out.append(device)
    return out or [torch.device("cpu")]

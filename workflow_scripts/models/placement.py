"""Where a model computes: one device, or accelerate's dispatch over several (docs/configuration.md).

Config (``placement:``, per model ``models.<key>.placement:``):

- ``device``: ``auto`` (CUDA when ``torch.cuda.is_available()``, else the CPU; the job
  log says which), ``cpu``, ``cuda`` or ``cuda:N``.
- ``device_map``: unset (the whole model on ``device``), ``auto`` / ``balanced`` /
  ``balanced_low_0`` / ``sequential`` (accelerate spreads the layers over the GPUs the
  job was given, then the CPU, then disk), or a dict ``module name -> device``.
- ``max_memory``: per device (``{0: "70GiB", cpu: "200GiB"}``), for ``device_map``;
  ``offload_folder``: where layers mapped to ``disk`` are stored.
- ``batch_size``: per stage, the batch size used instead of the stage's own when the
  job computes on CUDA (the stage's ``batch_size`` is the CPU value).

Every computation follows the model: inputs go to :func:`input_device` (the
embedding's execution device), hooks create what they need on the device of the tensor
they see, and weights read outside a module's forward go through :func:`weight`, which
loads an offloaded weight onto its execution device first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# stages whose batch size placement.batch_size may replace on CUDA (inference only:
# a training batch size changes the result, so the regions keep theirs)
GPU_BATCH_STAGES = ("actcount", "lape", "experts", "plnd", "logit_lens", "ablation")
GPU_BATCH_STAGES += ("unit_stats", "steering", "tasks")


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device of a ``device`` setting; a clear error if CUDA is asked but absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {spec!r}: CUDA is not available here (torch {torch.__version__}, "
                f"{torch.cuda.device_count()} GPUs visible); use device: auto or cpu, "
                "or run the job where a GPU is (resources: {gpu: 1})"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {spec!r}: only {torch.cuda.device_count()} GPUs are visible to this job"
            )
    elif device.type != "cpu":
        raise ValueError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    return device


def load_kwargs(placement: Mapping[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` keywords for ``placement`` (empty without a ``device_map``)."""
    device_map = placement.get("device_map")
    if device_map is None:
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ValueError(f"device_map {device_map!r}: expected one of {DEVICE_MAPS} or a dict")
    if isinstance(device_map, str) and not torch.cuda.is_available():
        log.warning("device_map %s without CUDA: the model stays on the CPU", device_map)
    out: dict[str, Any] = {"device_map": device_map}
    if placement.get("max_memory"):
        out["max_memory"] = {
            (int(k) if str(k).isdigit() else k): v for k, v in placement["max_memory"].items()
        }
    if placement.get("offload_folder"):
        out["offload_folder"] = placement["offload_folder"]
    return out


def place(model: nn.Module, placement: Mapping[str, Any]) -> nn.Module:
    """Move a loaded model to ``placement["device"]`` unless accelerate dispatched it."""
    if getattr(model, "hf_device_map", None) is None:
        model.to(resolve_device(placement.get("device", "auto")))
    log.info("model computes on %s", describe(model))
    return model


def as_device(where: int | str | torch.device) -> torch.device:
    """A place as accelerate writes it (``0`` is ``cuda:0``; ``"cpu"``, ``"cuda:1"``)."""
    return torch.device(f"cuda:{where}" if isinstance(where, int) else where)


class OnDevices:
    """One tensor (a token mask), copied once to each device that asks for it: with a
    ``device_map`` the layers' hooks see activations on different GPUs."""

    def __init__(self, tensor: torch.Tensor):
        self._on = {tensor.device: tensor}
        self._source = tensor

    def __call__(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self._source.to(device)
        return self._on[device]


def describe(model: nn.Module) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)``, ``cpu``, or the device map's layers per device."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        per: dict[str, int] = {}
        for where in device_map.values():
            key = "disk" if where == "disk" else str(as_device(where))
            per[key] = per.get(key, 0) + 1
        return "device_map " + ", ".join(f"{d}: {n} modules" for d, n in per.items())
    device = input_device(model)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device, else that of its tensors."""
    where = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if where is not None:
        return as_device(where)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    for sub in module.modules():  # offloaded: the first hooked submodule says
        where = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if where is not None:
            return as_device(where)
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """The device token ids go to: the input embedding's execution device."""
    return execution_device(model.get_input_embeddings())


def weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>`` as a real tensor on the module's execution device.

    Under accelerate's offloading a weight is a ``meta`` placeholder outside the
    module's own forward; here it is loaded for the caller (and stays valid after).
    """
    tensor = getattr(module, name)
    if tensor.device.type != "meta":
        return tensor
    from accelerate.utils import align_module_device

    with align_module_device(module):
        return getattr(module, name).detach()


def check_editable(model: nn.Module, what: str) -> None:
    """Raise if some weights of ``model`` are offloaded (edits in place would be lost)."""
    offloaded = [
        name
        for name, module in model.named_modules()
        if getattr(getattr(module, "_hf_hook", None), "offload", False)
    ]
    if offloaded:
        raise NotImplementedError(
            f"{what} edits weights in place, but {len(offloaded)} modules of the model are "
            f"offloaded by its device_map (e.g. {offloaded[0]}); use hooks (ablation.mode: "
            "hooks) or a device_map that keeps every layer on a GPU or the CPU"
        )


def batch_size_for(model: nn.Module, placement: Mapping[str, Any], stage: str, default: int) -> int:
    """``default`` on the CPU; on CUDA the stage's ``placement.batch_size`` (if it has one)."""
    if input_device(model).type == "cuda" and stage in GPU_BATCH_STAGES:
        return int(placement.get("batch_size", {}).get(stage, default))
    return default

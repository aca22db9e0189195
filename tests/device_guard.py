"""A torch function mode that records what the workflow's own code does with devices.

No GPU is on the machines that run the tests, so a tensor created on the host inside a
hook would go unnoticed: on the CPU every tensor is on the model's device. This mode
sees every torch call and, for the calls made from files under ``roots`` (the
``workflow_scripts`` package), records

- **implicit devices**: a tensor factory (``torch.zeros``, ``torch.tensor``, ``arange``
  ...) called without ``device=``. On a GPU such a tensor lands on the host and either
  fails (mixed devices) or copies every time; with an explicit ``device`` (the device
  of the tensor the code works on, or ``"cpu"`` where the host is meant) the code says
  where it computes;
- **host transfers**: ``.cpu()``, ``.item()``, ``.tolist()``, ``.numpy()`` and
  ``.to("cpu")``, each a device-to-host copy and a synchronisation on a GPU. Tests count
  them to show they grow with batches, never with tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.tensor,
    torch.as_tensor,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.eye,
    torch.linspace,
}
HOST = {
    torch.Tensor.cpu,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
}
TORCH_DIR = str(Path(torch.__file__).parent)


def _names_host(args, kwargs) -> bool:
    """``.to("cpu")`` / ``.to(device="cpu")``: a literal host target (a ``torch.device``
    taken from another tensor follows that tensor and is not counted)."""
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, str) and target.startswith("cpu")


class DeviceGuard(TorchFunctionMode):
    """Record implicit-device factories and host transfers made from ``roots``."""

    def __init__(self, *roots: Path):
        super().__init__()
        self.roots = tuple(str(Path(r).resolve()) for r in roots)
        self.implicit: list[str] = []
        self.host: list[str] = []

    def _caller(self) -> str | None:
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR):
            frame = frame.f_back
        if frame is None:
            return None
        name = frame.f_code.co_filename
        return f"{Path(name).name}:{frame.f_lineno}" if name.startswith(self.roots) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            where = self._caller()
            if where:
                self.implicit.append(f"{where} torch.{func.__name__}")
        elif func in HOST or (func is torch.Tensor.to and _names_host(args[1:], kwargs)):
            where = self._caller()
            if where:
                self.host.append(f"{where} {func.__name__}")
        return func(*args, **kwargs)

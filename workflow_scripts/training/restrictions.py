"""Which elements a fine-tune may change (docs/methods.md, "Fine-tuning").

Every fine-tune of the DAG runs the one loop of :mod:`.loop`; they differ only by a
restriction:

- :class:`AllParameters`: every trainable parameter (``trainable: layers``: the layers');
- :class:`NeuronMask`: only the weights of a neuron set (Zhao et al.'s enhancement): the
  gradient of every tensor holding a selected unit is multiplied by a 0/1 mask of the
  unit's rows (gate/up/q/k/v, biases) and columns (down/o); every other tensor is frozen.
  Weight decay is off in the masked tensors, so AdamW leaves the unselected elements
  bit-identical (a zero gradient gives a zero Adam update);
- :class:`FrozenRegion`: a region keeps its values, restored after every optimizer step
  (Zhang et al.'s region-freeze training);
- :class:`LoRA`: ``peft`` low-rank adapters on named projection modules of the layers;
  only the adapters train, and they are merged back into the base weights at the end.

A restriction is checked (:meth:`Restriction.check`, which ``continued_pretraining``
runs first), applied before the trainer is built (:meth:`Restriction.prepare`), runs
after every optimizer step (:meth:`Restriction.after_step`) and is undone once training
ends (:meth:`Restriction.finish`: hooks removed, adapters merged), leaving a model of
the base shape.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from workflow_scripts.models.anatomy import (
    attention_sites,
    decoder_layers,
    ffn_sites,
    region_parameters,
)
from workflow_scripts.models.placement import check_editable

log = logging.getLogger(__name__)
Unit = tuple[int, str, int]


class Restriction:
    """All parameters train (the base class; ``trainable: layers`` is the loop's)."""

    kind = "all"

    def check(self, model: nn.Module, settings: Mapping[str, Any] | None = None) -> None:
        """Raise, naming the culprit, if the restriction does not fit ``model`` (or the
        training ``settings``: engine, ZeRO stage)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module to train (the model, or a wrapper of it)."""
        return model

    def parameters(self, model: nn.Module, settings: Mapping[str, Any]) -> list[nn.Parameter]:
        """The trained parameters: every one (``trainable: all``) or the layers' (``layers``)."""
        if settings.get("trainable", "all") == "layers":
            names = set(region_parameters(model))
            for n, p in model.named_parameters():
                p.requires_grad_(n in names)
        return [p for p in model.parameters() if p.requires_grad]

    def param_groups(self, params: Sequence[nn.Parameter], weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups over the trained ``params``."""
        return [{"params": list(params), "weight_decay": weight_decay}]

    def after_step(self) -> None:
        """Runs after every optimizer step."""

    def finish(self, trained: nn.Module) -> nn.Module:
        """Undo :meth:`prepare`; the model in its base shape."""
        return trained

    def describe(self) -> dict[str, Any]:
        return {"restriction": self.kind}


AllParameters = Restriction


class NeuronMask(Restriction):
    """Train only the weights of ``units`` (``(layer, module, index)``, any family)."""

    kind = "neurons"

    def __init__(self, units: Iterable[Unit]):
        self.units = sorted({(int(a), str(b), int(c)) for a, b, c in units})
        if not self.units:
            raise ValueError("neuron fine-tuning: the neuron set is empty (nothing would train)")
        self.masks: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._handles: list = []
        self._requires: list[tuple[nn.Parameter, bool]] = []

    def check(self, model: nn.Module, settings: Mapping[str, Any] | None = None) -> None:
        from workflow_scripts.evaluation.interventions import validate_units

        check_editable(model, "neuron fine-tuning")
        validate_units(model, self.units)

    def prepare(self, model: nn.Module) -> nn.Module:
        from workflow_scripts.evaluation.interventions import unit_slices

        masks: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        for param, where in unit_slices(model, self.units):
            if not isinstance(param, nn.Parameter):
                raise ValueError("neuron fine-tuning: a unit's weight is not a model parameter")
            if id(param) not in masks:
                masks[id(param)] = (param, torch.zeros_like(param, dtype=torch.bool))
            masks[id(param)][1][where] = True
        self.masks = list(masks.values())
        self._requires = [(p, p.requires_grad) for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(id(p) in masks)
        self._handles = [p.register_hook(_masked(mask)) for p, mask in self.masks]
        log.info(
            "neuron fine-tuning: %d units, %d elements in %d tensors may change",
            len(self.units),
            self.n_trainable(),
            len(self.masks),
        )
        return model

    def n_trainable(self) -> int:
        """The number of elements that may change."""
        return int(sum(int(m.sum()) for _, m in self.masks))

    def parameters(self, model: nn.Module, settings: Mapping[str, Any]) -> list[nn.Parameter]:
        """The masked tensors only (``trainable`` does not apply)."""
        return [p for p, _ in self.masks]

    def param_groups(self, params: Sequence[nn.Parameter], weight_decay: float) -> list[dict]:
        if weight_decay:
            log.info("neuron fine-tuning: weight decay off (it would move unselected elements)")
        return [{"params": list(params), "weight_decay": 0.0}]

    def finish(self, trained: nn.Module) -> nn.Module:
        for h in self._handles:
            h.remove()
        self._handles = []
        for p, flag in self._requires:
            p.requires_grad_(flag)
        return trained

    def describe(self) -> dict[str, Any]:
        return {"restriction": self.kind, "n_units": len(self.units)}


def _masked(mask: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(grad.device)

    return hook


class FrozenRegion(Restriction):
    """Restore ``region``'s elements (``param -> flat indices``) after every step."""

    kind = "frozen_region"

    def __init__(self, region: Mapping[str, torch.Tensor]):
        self.region = dict(region)
        if not any(i.numel() for i in self.region.values()):
            raise ValueError("region-freeze training: the region is empty (nothing is frozen)")

    def check(self, model: nn.Module, settings: Mapping[str, Any] | None = None) -> None:
        from workflow_scripts.regions.selection import region_params

        s = settings or {}
        if s.get("engine") == "deepspeed" and s.get("zero_stage", 2) > 0:
            raise ValueError(
                "region-freeze training restores weights after every step, but DeepSpeed ZeRO "
                f"stage {s['zero_stage']} keeps its own fp32 master copy that would drift: "
                "use zero_stage: 0 (or engine: torch)"
            )
        check_editable(model, "region-freeze training")
        region_params(model, self.region)

    def prepare(self, model: nn.Module) -> nn.Module:
        from workflow_scripts.regions.selection import region_params

        self.params = region_params(model, self.region)
        self.index = {n: self.region[n].to(p.device) for n, p in self.params.items()}
        self.frozen = {
            n: p.detach().view(-1)[self.index[n]].clone() for n, p in self.params.items()
        }
        return model

    def after_step(self) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.data.view(-1)[self.index[n]] = self.frozen[n]

    def describe(self) -> dict[str, Any]:
        n = int(sum(i.numel() for i in self.region.values()))
        return {"restriction": self.kind, "frozen_elements": n}


class LoRA(Restriction):
    """``peft`` LoRA adapters (rank ``r``, ``alpha``) on the layers' ``target_modules``."""

    kind = "lora"

    def __init__(self, r: int, alpha: float, target_modules: Sequence[str], dropout: float = 0.0):
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = list(target_modules)
        if not self.target_modules:
            raise ValueError("LoRA: no target module named (finetune.lora.target_modules)")

    def check(self, model: nn.Module, settings: Mapping[str, Any] | None = None) -> None:
        """Raise, naming them, if some target modules are not linear layers of the model."""
        check_editable(model, "LoRA fine-tuning (adapters are merged into the weights)")
        layers = decoder_layers(model)
        names = {n.rsplit(".", 1)[-1] for n, m in layers.named_modules() if _is_linear(m)}
        missing = sorted(set(self.target_modules) - names)
        if missing:
            raise ValueError(
                f"LoRA: the model has no linear layer named {missing} in its decoder layers "
                f"(it has {sorted(names)}); set finetune.lora.target_modules"
            )

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        self._requires = [(p, p.requires_grad) for p in model.parameters()]
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
        )
        with warnings.catch_warnings():  # peft asks transformers a deprecated question
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
            wrapped = get_peft_model(model, config)
        trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        log.info("LoRA r=%d on %s: %d adapter parameters", self.r, self.target_modules, trainable)
        self.n_adapter = trainable
        return wrapped

    def parameters(self, model: nn.Module, settings: Mapping[str, Any]) -> list[nn.Parameter]:
        """The adapters only (``trainable`` does not apply)."""
        return [p for p in model.parameters() if p.requires_grad]

    def finish(self, trained: nn.Module) -> nn.Module:
        merged = trained.merge_and_unload()
        for p, flag in self._requires:  # the base weights train again, as before
            p.requires_grad_(flag)
        return merged

    def describe(self) -> dict[str, Any]:
        return {
            "restriction": self.kind,
            "lora_r": self.r,
            "lora_alpha": self.alpha,
            "lora_target_modules": ",".join(self.target_modules),
            "lora_parameters": getattr(self, "n_adapter", None),
        }


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def projection_names(
    model: nn.Module, parts: Iterable[str] = ("ffn", "q", "k", "v", "o")
) -> list[str]:
    """The module names of the layers' projections of ``parts`` (PLND's vocabulary): the
    default LoRA targets, the same modules the neuron set lives in."""
    parts = set(parts)
    layer = decoder_layers(model)[0]
    names: dict[int, str] = {id(m): n.rsplit(".", 1)[-1] for n, m in layer.named_modules()}
    out: list[str] = []
    if "ffn" in parts or "mlp" in parts:
        site = ffn_sites(model)[0]
        for proj in (getattr(site, "first", None), getattr(site, "up", None), site.down):
            if proj is not None and id(proj) in names:
                out.append(names[id(proj)])
    attention = parts & {"q", "k", "v", "o"}
    if attention:
        site = attention_sites(model)[0]
        for part in sorted(attention, key="qkvo".index):
            proj = site.qkv if (site.qkv is not None and part != "o") else getattr(site, part)
            if proj is not None and id(proj) in names:
                out.append(names[id(proj)])
    return list(dict.fromkeys(out))

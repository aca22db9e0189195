"""Region-freeze training: fine-tune while a region keeps its values (Zhang et al.).

After every optimizer step the frozen region's elements are restored to their saved
values (docs/methods.md, "Fine-tuning").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from workflow_scripts.models.placement import check_editable
from workflow_scripts.regions.selection import region_params
from workflow_scripts.training.checkpoints import TrainingCheckpoint
from workflow_scripts.training.loop import continued_pretraining


def freeze_train(
    model: nn.Module,
    docs: Sequence[list[int]],
    region: Mapping[str, torch.Tensor],
    settings: Mapping[str, Any],
    pad_id: int,
    checkpoint: TrainingCheckpoint | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` while restoring ``region``'s elements after every optimizer step."""
    check_editable(model, "region-freeze training")
    params = region_params(model, region)
    index = {n: region[n].to(p.device) for n, p in params.items()}  # once, not per step
    frozen = {n: params[n].detach().view(-1)[index[n]].clone() for n in params}

    def restore() -> None:
        with torch.no_grad():
            for n, p in params.items():
                p.data.view(-1)[index[n]] = frozen[n]

    info = continued_pretraining(model, docs, settings, pad_id, checkpoint, restore)
    info["frozen_elements"] = int(sum(i.numel() for i in region.values()))
    return info

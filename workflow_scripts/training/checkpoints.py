"""Resumable training state: a killed training job resumes instead of restarting.

A checkpoint lives in its own directory outside the rule's outputs (Snakemake
deletes the outputs of a failed job, not this directory). It holds the model
and optimizer state, the step reached, torch's RNG state and a fingerprint of
the settings; a checkpoint written under other settings is ignored, so a
changed parameter never resumes from stale state. Every save is atomic: a kill
during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from workflow_scripts.io import atomic_path

log = logging.getLogger(__name__)

STATE = "state.pt"


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A stable hash of JSON-serialisable settings."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_hash(*modules) -> str:
    """A hash of the modules' source files: a checkpoint written by other code is not resumed."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


class TrainingCheckpoint:
    """Save and restore (model, optimizer, scheduler, step, extra) in ``directory``.

    ``model``, ``optimizer`` and ``scheduler`` may be None (accumulators without
    optimizer steps keep their state in ``extra``).

    ``every`` is the number of optimizer steps between saves (0 disables
    saving). ``settings`` identify the run (include :func:`source_hash` of the
    training code); a checkpoint with other settings is discarded on :meth:`restore`.
    """

    def __init__(self, directory: str | os.PathLike, settings: Mapping[str, Any], every: int):
        self.directory = Path(directory)
        self.key = fingerprint(settings)
        self.every = every

    @property
    def path(self) -> Path:
        return self.directory / STATE

    def restore(self, model, optimizer, scheduler=None) -> tuple[int, dict]:
        """Load the saved state into the objects; return (next step, extra) or (0, {})."""
        if not self.path.exists():
            return 0, {}
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:  # a checkpoint that cannot be read is not worth failing for
            log.warning("ignoring unreadable checkpoint %s: %s", self.path, err)
            return 0, {}
        if state.get("key") != self.key:
            log.info("checkpoint %s was written under other settings: starting over", self.path)
            return 0, {}
        if model is not None:
            model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        log.info("resuming from checkpoint %s at step %d", self.path, state["step"])
        return state["step"], state.get("extra", {})

    def due(self, step: int) -> bool:
        """Whether a save is due after ``step`` completed steps (a multiple of ``every``)."""
        return self.every > 0 and step % self.every == 0

    def maybe_save(self, step: int, model, optimizer, scheduler=None, extra=None) -> bool:
        """Save after ``step`` completed steps if :meth:`due`."""
        if not self.due(step):
            return False
        self.save(step, model, optimizer, scheduler, extra)
        return True

    def save(self, step: int, model, optimizer, scheduler=None, extra=None) -> None:
        state = {
            "key": self.key,
            "step": step,
            "model": model.state_dict() if model is not None else None,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": torch.get_rng_state(),
            "extra": extra or {},
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        log.info("checkpoint saved at step %d: %s", step, self.path)

    def clear(self) -> None:
        """Remove the checkpoint once the output is safely written."""
        shutil.rmtree(self.directory, ignore_errors=True)

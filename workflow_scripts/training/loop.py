"""One training loop for every fine-tune of the DAG (docs/methods.md, "Training").

Tiny-model pretraining, continued pretraining for the regions' delta scores and the
fine-tuning experiments (neuron enhancement, region freezing, LoRA, full) all run
:func:`train_steps` over a trainer: plain PyTorch (:class:`TorchTrainer`: backward,
gradient accumulation, clipping, AdamW, an optional learning-rate schedule; CPU or one
GPU) or DeepSpeed ZeRO 0-2 (:class:`DeepSpeedTrainer`, on GPU nodes). They differ only
in their batches and in which elements may change (a
:class:`~workflow_scripts.training.restrictions.Restriction`). State is checkpointed
every ``checkpoint.every`` steps and a re-run resumes where it stopped, on the same data.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.models.loading import load_model
from workflow_scripts.models.padding import right_padded
from workflow_scripts.models.placement import input_device
from workflow_scripts.training.checkpoints import TrainingCheckpoint, source_hash
from workflow_scripts.training.restrictions import Restriction

log = logging.getLogger(__name__)


def training_documents(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of the texts of at most ``max_length`` tokens (longer ones dropped, as the paper)."""
    enc = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    docs = [list(ids) for ids in enc if 2 <= len(ids) <= max_length]
    if not docs:
        raise ValueError(
            f"training: none of {len(texts)} documents has 2..{max_length} tokens "
            "(empty corpus, or raise max_length)"
        )
    log.info("training: %d of %d documents within %d tokens", len(docs), len(texts), max_length)
    return docs


def collate(docs: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask = right_padded(docs, pad_id)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def training_batches(
    docs: Sequence[list[int]], batch_size: int, seed: int, pad_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless right-padded batches: the documents reshuffled (seeded) every epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(docs)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield collate([docs[j] for j in order[i : i + batch_size]], pad_id)


def make_optimizer(
    model: nn.Module, settings: Mapping[str, Any], restriction: Restriction | None = None
) -> torch.optim.Optimizer:
    """AdamW over the trained parameters (``trainable``: ``all`` or ``layers``; the
    groups and weight decay as the ``restriction`` says)."""
    return torch.optim.AdamW(optimizer_groups(model, settings, restriction), lr=settings["lr"])


def optimizer_groups(
    model: nn.Module, settings: Mapping[str, Any], restriction: Restriction | None = None
) -> list[dict]:
    """The restriction's parameter groups over the parameters it trains."""
    restriction = restriction or Restriction()
    params = restriction.parameters(model, settings)
    return restriction.param_groups(params, settings.get("weight_decay", 0.0))


class TorchTrainer:
    """Plain PyTorch: backward, gradient accumulation, clipping, AdamW (CPU or one GPU)."""

    def __init__(
        self,
        model: nn.Module,
        settings: Mapping[str, Any],
        max_grad_norm: float = 1.0,
        schedule: Callable[[int], float] | None = None,
        restriction: Restriction | None = None,
    ):
        """``schedule(step)``: a learning-rate multiplier per optimizer step (LambdaLR);
        ``settings["grad_accum"]`` micro-batches per optimizer step (default 1)."""
        self.model = model
        self.optimizer = make_optimizer(model, settings, restriction)
        self.max_grad_norm = max_grad_norm
        self.accumulate = settings.get("grad_accum", 1)
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule) if schedule else None
        )

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch, use_cache=False).loss

    def backward(self, loss: torch.Tensor) -> None:
        """One micro-batch's gradients, scaled so that the accumulated step is their mean."""
        (loss / self.accumulate if self.accumulate > 1 else loss).backward()

    def step(self) -> None:
        if self.max_grad_norm:
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def restore(self, checkpoint: TrainingCheckpoint) -> tuple[int, dict]:
        return checkpoint.restore(self.model, self.optimizer, self.scheduler)

    def save(self, checkpoint: TrainingCheckpoint, step: int, extra: dict) -> None:
        checkpoint.maybe_save(step, self.model, self.optimizer, self.scheduler, extra)


def deepspeed_config(settings: Mapping[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """The DeepSpeed config of a region training run (ZeRO stage, AdamW, clipping)."""
    return {
        "train_micro_batch_size_per_gpu": settings["batch_size"],
        "gradient_accumulation_steps": settings.get("grad_accum", 1),
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": settings.get("zero_stage", 2)},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": settings["lr"], "weight_decay": settings.get("weight_decay", 0.0)},
        },
    }


class DeepSpeedTrainer:
    """DeepSpeed ZeRO (stages 0-2: parameters stay whole, so deltas can be read on every
    rank). Needs the ``deepspeed`` package and, in practice, a GPU node (README)."""

    def __init__(
        self,
        model: nn.Module,
        settings: Mapping[str, Any],
        engine=None,
        restriction: Restriction | None = None,
    ):
        self.accumulate = settings.get("grad_accum", 1)
        if engine is None:
            try:
                import deepspeed
            except ImportError as err:
                raise RuntimeError(
                    "regions.engine is deepspeed but the deepspeed package is not installed "
                    "(pip install deepspeed on the GPU node, or set regions.engine: torch)"
                ) from err
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            groups = optimizer_groups(model, settings, restriction)
            engine, *_ = deepspeed.initialize(
                model=model, model_parameters=groups, config=deepspeed_config(settings, dtype)
            )
        self.engine, self.model = engine, model

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.engine(**batch, use_cache=False).loss

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scaled by gradient_accumulation_steps
        self.engine.step()  # steps (clipping, AdamW, zero_grad) at accumulation boundaries

    def step(self) -> None:
        """Nothing: the engine stepped in :meth:`backward` at the boundary."""

    def restore(self, checkpoint: TrainingCheckpoint) -> tuple[int, dict]:
        path = checkpoint.directory / "deepspeed"
        if not path.exists():
            return 0, {}
        _, state = self.engine.load_checkpoint(str(path))
        if not state or state.get("key") != checkpoint.key:
            return 0, {}
        return state["step"], state.get("extra", {})

    def save(self, checkpoint: TrainingCheckpoint, step: int, extra: dict) -> None:
        if checkpoint.due(step):
            state = {"key": checkpoint.key, "step": step, "extra": extra}
            self.engine.save_checkpoint(str(checkpoint.directory / "deepspeed"), client_state=state)


def make_trainer(
    model: nn.Module, settings: Mapping[str, Any], restriction: Restriction | None = None
):
    """:class:`TorchTrainer` or :class:`DeepSpeedTrainer` by ``settings["engine"]``."""
    if settings.get("engine", "torch") == "deepspeed":
        return DeepSpeedTrainer(model, settings, restriction=restriction)
    return TorchTrainer(model, settings, restriction=restriction)


def train_steps(
    trainer: TorchTrainer | DeepSpeedTrainer,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    checkpoint: TrainingCheckpoint | None = None,
    after_step=None,
    log_every: int = 10,
) -> dict[str, Any]:
    """``steps`` optimizer steps of causal-LM training; resumes from ``checkpoint``.

    Each step accumulates ``trainer.accumulate`` batches; ``after_step()`` runs after
    every optimizer step (region freezing). Batches already consumed before a resume are
    skipped, so a resumed run sees the same data as an uninterrupted one. The recorded
    loss of a step is the mean over its micro-batches. The process's peak resident memory
    after the first and the last step (``peak_rss_mb_first``, ``peak_rss_mb_last``) shows
    whether memory grows with the steps.
    """
    start, extra = trainer.restore(checkpoint) if checkpoint else (0, {})
    losses: list[float] = extra.get("losses", [])
    accumulate = getattr(trainer, "accumulate", 1)
    for _ in range(start * accumulate):
        next(batches)
    model = trainer.model
    device = input_device(model)
    model.train()
    t0 = time.time()
    peaks: list[float] = []
    for step in range(start, steps):
        total = 0.0
        for _ in range(accumulate):
            loss = trainer.loss({k: v.to(device) for k, v in next(batches).items()})
            trainer.backward(loss)
            total += loss.item()
        trainer.step()
        if after_step is not None:
            after_step()
        losses.append(total / accumulate)  # callers round for their records
        if not peaks or step == steps - 1:
            peaks.append(peak_rss_mb())
        if step % log_every == 0 or step == steps - 1:
            log.info(
                "train step %d/%d loss %.4f (peak RSS %.0f MB)",
                step + 1,
                steps,
                losses[-1],
                peak_rss_mb(),
            )
        if checkpoint:
            trainer.save(checkpoint, step + 1, {"losses": losses})
    model.eval()
    info = {"losses": losses, "resumed_at_step": start, "train_seconds": time.time() - t0}
    if peaks:
        info["peak_rss_mb_first"], info["peak_rss_mb_last"] = peaks[0], peaks[-1]
    return info


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def continued_pretraining(
    model: nn.Module,
    docs: Sequence[list[int]],
    settings: Mapping[str, Any],
    pad_id: int,
    checkpoint: TrainingCheckpoint | None = None,
    restriction: Restriction | None = None,
) -> dict[str, Any]:
    """``settings["steps"]`` seeded training steps on ``docs`` (see :func:`train_steps`),
    changing only what ``restriction`` allows (default: every trainable parameter).

    The model is trained in place and comes back in its base shape (LoRA adapters
    merged, gradient masks removed).
    """
    restriction = restriction or Restriction()
    restriction.check(model, settings)
    torch.manual_seed(settings.get("seed", 0))
    trained = restriction.prepare(model)
    try:
        trainer = make_trainer(trained, settings, restriction)
        batches = training_batches(docs, settings["batch_size"], settings.get("seed", 0), pad_id)
        info = train_steps(trainer, batches, settings["steps"], checkpoint, restriction.after_step)
    finally:
        restriction.finish(trained)
    info["losses"] = [round(x, 5) for x in info["losses"]]
    return {**info, **restriction.describe()}


def prepare_run(
    model_path: str,
    dtype: str,
    settings: Mapping[str, Any],
    corpus: str,
    checkpoint_dir: str,
    checkpoint_every: int,
    threads: int | None = None,
    code: Sequence[Any] = (),
    placement: Mapping[str, Any] | None = None,
    **identity: str,
) -> tuple[nn.Module, Any, list[list[int]], TrainingCheckpoint]:
    """What a training job starts from: ``(model, tokenizer, docs, checkpoint)``.

    ``settings``: n_docs, max_length and the training settings. The checkpoint is keyed
    by the settings, the model, ``identity`` (language, region ...) and the source of
    this module and of the ``code`` modules, so stale state is never resumed.
    ``placement``: where the model trains: its ``device`` only; a ``device_map`` is for
    the inference stages (accelerate's dispatch runs layers one GPU after the other),
    training on several GPUs is DeepSpeed's (``engine: deepspeed``).
    """
    if placement and placement.get("device_map") is not None:
        log.info("training on placement.device; device_map is used by inference stages only")
        placement = {**placement, "device_map": None}
    model, tokenizer = load_model(model_path, dtype, threads, placement)
    texts = sample_texts(corpus, "train", settings["n_docs"])
    docs = training_documents(tokenizer, texts, settings["max_length"])
    digest = source_hash(sys.modules[__name__], *code)
    key = {**settings, **identity, "model": model_path, "code": digest}
    checkpoint = TrainingCheckpoint(checkpoint_dir, key, checkpoint_every)
    return model, tokenizer, docs, checkpoint

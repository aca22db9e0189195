"""Linguistic regions from per-element parameter scores, Zhang et al. 2024 (METHODS.md section 3).

Per language, every element of every parameter *inside the transformer layers*
(norm vectors and biases included; embeddings, final norm and LM head left out)
gets a score:

- ``delta`` (the slides): ``|theta_after - theta_before|`` after a short continued
  pretraining on the language (AdamW, :func:`delta_scores`);
- ``grad_x_param`` (the paper's released code): ``|sum over batches of grad * theta|``
  without optimizer steps (:func:`grad_x_param_scores`).

Documents longer than ``max_length`` tokens are dropped, as in the paper. Scores
are dense float32 safetensors (:func:`write_scores`). :func:`select_regions` sums
them over the region languages, ranks each parameter tensor separately and keeps
a ``k`` fraction: ``top``, ``bottom``, an equal-size seeded ``random``, ``core`` (the
important end: ``bottom`` for delta, ``top`` for grad_x_param) and ``monolingual_L``
(elements in L's own important end and in no other region language's).

:func:`perturbed` zeroes, adds noise to or rescales a region and restores it;
:func:`freeze_train` fine-tunes while restoring a region after every optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.io import atomic_path
from workflow_scripts.models.anatomy import decoder_layers
from workflow_scripts.models.loading import load_model
from workflow_scripts.models.padding import right_padded
from workflow_scripts.training.checkpoints import TrainingCheckpoint, source_hash

log = logging.getLogger(__name__)

SCORES = ("delta", "grad_x_param")
IMPORTANT_END = {"delta": "bottom", "grad_x_param": "top"}
KINDS = ("matrix", "norm", "bias")
REGION_COLUMNS = ("param", "flat_index", "layer", "kind")
PERTURBATIONS = ("zero", "noise", "rescale")


# ------------------------------------------------------------------ parameters


def layers_prefix(model: nn.Module) -> str:
    """Qualified name of the module list holding the transformer blocks."""
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError(f"{type(model).__name__}: transformer layers not found")


def region_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters inside the transformer layers, by qualified name (norms and biases included)."""
    prefix = layers_prefix(model) + "."
    params = {n: p for n, p in model.named_parameters() if n.startswith(prefix)}
    if not params:
        raise ValueError(f"{type(model).__name__}: no parameter inside the transformer layers")
    return params


def param_kind(name: str, ndim: int) -> str:
    """``matrix`` (2-D and up), ``norm`` (a norm's scale vector) or ``bias``."""
    if ndim >= 2:
        return "matrix"
    module = name.rsplit(".", 2)[-2].lower()
    return "norm" if "norm" in module or module.startswith("ln") else "bias"


def param_layer(name: str, prefix: str) -> int:
    """Layer number of a parameter named ``{prefix}.{layer}.…``."""
    return int(name[len(prefix) + 1 :].split(".", 1)[0])


def param_module(name: str, prefix: str) -> str:
    """The parameter's name inside its layer, e.g. ``mlp.down_proj.weight``."""
    return name[len(prefix) + 1 :].split(".", 1)[1]


# ------------------------------------------------------------------- documents


def training_documents(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of the texts of at most ``max_length`` tokens (longer ones dropped, as the paper)."""
    enc = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    docs = [list(ids) for ids in enc if 2 <= len(ids) <= max_length]
    if not docs:
        raise ValueError(
            f"regions: none of {len(texts)} documents has 2..{max_length} tokens "
            "(empty corpus, or raise max_length)"
        )
    log.info("regions: %d of %d documents within %d tokens", len(docs), len(texts), max_length)
    return docs


def _collate(docs: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
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
            yield _collate([docs[j] for j in order[i : i + batch_size]], pad_id)


# --------------------------------------------------------------------- scores


def make_optimizer(model: nn.Module, settings: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW over the trained parameters (``trainable``: ``all`` or ``layers``)."""
    params = _trainable(model, settings)
    return torch.optim.AdamW(
        params, lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0)
    )


def _trainable(model: nn.Module, settings: Mapping[str, Any]) -> list[nn.Parameter]:
    if settings.get("trainable", "all") == "layers":
        names = set(region_parameters(model))
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
    return [p for p in model.parameters() if p.requires_grad]


class TorchTrainer:
    """Plain PyTorch: backward, gradient clipping, AdamW step (CPU or one GPU)."""

    def __init__(self, model: nn.Module, settings: Mapping[str, Any], max_grad_norm: float = 1.0):
        self.model = model
        self.optimizer = make_optimizer(model, settings)
        self.max_grad_norm = max_grad_norm

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch, use_cache=False).loss

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.max_grad_norm:
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def restore(self, checkpoint: TrainingCheckpoint) -> tuple[int, dict]:
        return checkpoint.restore(self.model, self.optimizer)

    def save(self, checkpoint: TrainingCheckpoint, step: int, extra: dict) -> None:
        checkpoint.maybe_save(step, self.model, self.optimizer, extra=extra)


def deepspeed_config(settings: Mapping[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """The DeepSpeed config of a region training run (ZeRO stage, AdamW, clipping)."""
    return {
        "train_micro_batch_size_per_gpu": settings["batch_size"],
        "gradient_accumulation_steps": 1,
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

    def __init__(self, model: nn.Module, settings: Mapping[str, Any], engine=None):
        if engine is None:
            try:
                import deepspeed
            except ImportError as err:
                raise RuntimeError(
                    "regions.engine is deepspeed but the deepspeed package is not installed "
                    "(pip install deepspeed on the GPU node, or set regions.engine: torch)"
                ) from err
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            engine, *_ = deepspeed.initialize(
                model=model,
                model_parameters=_trainable(model, settings),
                config=deepspeed_config(settings, dtype),
            )
        self.engine, self.model = engine, model

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.engine(**batch, use_cache=False).loss

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # clipping, optimizer step and zero_grad, as configured

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


def make_trainer(model: nn.Module, settings: Mapping[str, Any]):
    """:class:`TorchTrainer` or :class:`DeepSpeedTrainer` by ``settings["engine"]``."""
    if settings.get("engine", "torch") == "deepspeed":
        return DeepSpeedTrainer(model, settings)
    return TorchTrainer(model, settings)


def train_steps(
    trainer: TorchTrainer | DeepSpeedTrainer,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    checkpoint: TrainingCheckpoint | None = None,
    after_step=None,
) -> dict[str, Any]:
    """``steps`` optimizer steps of causal-LM training; resumes from ``checkpoint``.

    ``after_step()`` runs after every optimizer step (region freezing). Batches
    already consumed before a resume are skipped, so a resumed run sees the same
    data as an uninterrupted one.
    """
    start, extra = trainer.restore(checkpoint) if checkpoint else (0, {})
    losses: list[float] = extra.get("losses", [])
    for _ in range(start):
        next(batches)
    model = trainer.model
    device = next(model.parameters()).device
    model.train()
    t0 = time.time()
    for step in range(start, steps):
        loss = trainer.loss({k: v.to(device) for k, v in next(batches).items()})
        trainer.step(loss)
        if after_step is not None:
            after_step()
        losses.append(round(loss.item(), 5))
        if step % 10 == 0 or step == steps - 1:
            log.info("train step %d/%d loss %.4f", step + 1, steps, losses[-1])
        if checkpoint:
            trainer.save(checkpoint, step + 1, {"losses": losses})
    model.eval()
    return {"losses": losses, "resumed_at_step": start, "train_seconds": time.time() - t0}


def continued_pretraining(
    model: nn.Module,
    docs: Sequence[list[int]],
    settings: Mapping[str, Any],
    pad_id: int,
    checkpoint: TrainingCheckpoint | None = None,
    after_step=None,
) -> dict[str, Any]:
    """``settings["steps"]`` seeded training steps on ``docs`` (see :func:`train_steps`)."""
    torch.manual_seed(settings.get("seed", 0))
    trainer = make_trainer(model, settings)
    batches = training_batches(docs, settings["batch_size"], settings.get("seed", 0), pad_id)
    return train_steps(trainer, batches, settings["steps"], checkpoint, after_step)


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
    if start:
        acc = extra["acc"]
    bs = settings["batch_size"]
    docs = sorted(docs, key=len)  # similar lengths per batch: little padding (CPU time)
    n_batches = math.ceil(len(docs) / bs)
    device = next(model.parameters()).device
    model.eval()  # no dropout: the importance of the model as it is
    t0 = time.time()
    for b in range(start, n_batches):
        batch = {k: v.to(device) for k, v in _collate(docs[b * bs : (b + 1) * bs], pad_id).items()}
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


# -------------------------------------------------------------------- regions


def region_size(numel: int, k: float) -> int:
    """Elements kept of a tensor of ``numel``: ``round(k * numel)``, at least 1."""
    return max(1, round(k * numel))


def _ends(score: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ``n`` largest and ``n`` smallest (stable: ties by index)."""
    order = np.argsort(score, kind="stable")
    return np.sort(order[-n:]), np.sort(order[:n])


def _random_indices(name: str, numel: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(numel, size=n, replace=False))


def check_k(k: float) -> float:
    if not 0 < k <= 0.5:
        raise ValueError(f"regions: k must be in (0, 0.5], got {k}")
    return k


def select_regions(
    score_files: Mapping[str, str | Path],
    score: str,
    k: float,
    seed: int = 0,
    layers_prefix: str | None = None,
) -> dict[str, pa.Table]:
    """Region tables (columns ``REGION_COLUMNS``) from per-language score files.

    ``score_files``: region language -> safetensors of :func:`write_scores`. Each
    tensor is ranked separately by the sum of the languages' scores. Returns
    ``top``, ``bottom``, ``random``, ``core`` and ``monolingual_{lang}`` tables.
    Tensors are read one at a time (memory: one tensor per language).
    """
    if score not in SCORES:
        raise ValueError(f"regions: score must be one of {SCORES}, got {score!r}")
    check_k(k)
    if not score_files:
        raise ValueError("regions: no region language")
    langs = sorted(score_files)
    names = {lang: read_score_names(score_files[lang]) for lang in langs}
    first = names[langs[0]]
    for lang in langs[1:]:
        if names[lang] != first:
            raise ValueError(
                f"regions: {score_files[lang]} holds other tensors than {score_files[langs[0]]}"
            )
    prefix = layers_prefix or _common_layers_prefix(first)
    end = IMPORTANT_END[score]
    parts: dict[str, list[tuple[str, np.ndarray]]] = {}

    def keep(region: str, name: str, idx: np.ndarray) -> None:
        parts.setdefault(region, []).append((name, idx))

    handles = [safe_open(str(score_files[lang]), framework="numpy") for lang in langs]
    for name in first:
        per_lang = [h.get_tensor(name).reshape(-1).astype(np.float64) for h in handles]
        total = np.sum(per_lang, axis=0)
        n = region_size(total.size, k)
        top, bottom = _ends(total, n)
        keep("top", name, top)
        keep("bottom", name, bottom)
        keep("random", name, _random_indices(name, total.size, n, seed))
        keep("core", name, top if end == "top" else bottom)
        own = [_ends(s, n)[0 if end == "top" else 1] for s in per_lang]
        for i, lang in enumerate(langs):
            others = [own[j] for j in range(len(langs)) if j != i]
            mono = np.setdiff1d(own[i], np.concatenate(others)) if others else own[i]
            keep(f"monolingual_{lang}", name, mono)
    shapes = {name: handles[0].get_slice(name).get_shape() for name in first}
    regions = ["top", "bottom", "random", "core"] + [f"monolingual_{lang}" for lang in langs]
    return {r: _region_table(parts[r], shapes, prefix) for r in regions}


def _common_layers_prefix(names: Sequence[str]) -> str:
    """``model.layers`` from names like ``model.layers.3.mlp.up_proj.weight``."""
    for name in names:
        bits = name.split(".")
        for i, bit in enumerate(bits):
            if bit.isdigit():
                return ".".join(bits[:i])
    raise ValueError("regions: no layer-numbered tensor among the scores")


def _region_table(
    parts: Sequence[tuple[str, np.ndarray]], shapes: Mapping[str, Sequence[int]], prefix: str
) -> pa.Table:
    names, idx, layers, kinds = [], [], [], []
    for name, flat in parts:
        names.append(np.full(flat.size, name, dtype=object))
        idx.append(flat.astype(np.int64))
        layers.append(np.full(flat.size, param_layer(name, prefix), dtype=np.int32))
        kinds.append(np.full(flat.size, param_kind(name, len(shapes[name])), dtype=object))

    def cat(xs, dtype):
        return np.concatenate(xs) if xs else np.array([], dtype=dtype)

    return pa.table(
        {
            "param": pa.array(cat(names, object), pa.string()).dictionary_encode(),
            "flat_index": pa.array(cat(idx, np.int64), pa.int64()),
            "layer": pa.array(cat(layers, np.int32), pa.int32()),
            "kind": pa.array(cat(kinds, object), pa.string()).dictionary_encode(),
        }
    )


def region_indices(table: pa.Table, kinds: Sequence[str] = KINDS) -> dict[str, torch.Tensor]:
    """``param -> flat indices`` of a region table, restricted to parameter ``kinds``."""
    cols = table.select(["param", "flat_index", "kind"]).to_pandas()
    cols = cols[cols["kind"].astype(str).isin(list(kinds))]
    return {
        str(name): torch.as_tensor(group["flat_index"].to_numpy().copy(), dtype=torch.long)
        for name, group in cols.groupby("param", observed=True)
    }


def _region_params(model: nn.Module, region: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    missing = sorted(set(region) - set(params))
    if missing:
        raise ValueError(f"regions: parameters not in the model: {missing[:3]}")
    for name, idx in region.items():
        if idx.numel() and int(idx.max()) >= params[name].numel():
            raise ValueError(f"regions: index out of range for {name}")
    return {n: params[n] for n in region}


# ------------------------------------------------------------ perturb / freeze


@contextlib.contextmanager
def perturbed(
    model: nn.Module,
    region: Mapping[str, torch.Tensor],
    how: str = "zero",
    scale: float = 1.0,
    seed: int = 0,
) -> Iterator[None]:
    """Perturb the region's elements while the context is active; restore them on exit.

    ``zero`` sets them to 0 (for Gemma's ``x * (1 + w)`` norms that is a scale of 1);
    ``noise`` adds Gaussian noise of std ``scale`` x the tensor's root mean square
    (seeded; the RMS, not the std, so constant norm vectors get noise too);
    ``rescale`` multiplies them by ``scale``.
    """
    if how not in PERTURBATIONS:
        raise ValueError(f"perturb: how must be one of {PERTURBATIONS}, got {how!r}")
    params = _region_params(model, region)
    gen = torch.Generator().manual_seed(seed)
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name in sorted(params):
                flat, idx = params[name].data.view(-1), region[name].to(params[name].device)
                saved.append((flat, idx, flat[idx].clone()))
                if how == "zero":
                    flat[idx] = 0
                elif how == "rescale":
                    flat[idx] *= scale
                else:
                    rms = float(flat.float().square().mean().sqrt()) or 1.0
                    noise = torch.randn(idx.numel(), generator=gen) * (scale * rms)
                    flat[idx] += noise.to(flat.dtype).to(flat.device)
        yield
    finally:
        with torch.no_grad():
            for flat, idx, values in reversed(saved):
                flat[idx] = values


def freeze_train(
    model: nn.Module,
    docs: Sequence[list[int]],
    region: Mapping[str, torch.Tensor],
    settings: Mapping[str, Any],
    pad_id: int,
    checkpoint: TrainingCheckpoint | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` while restoring ``region``'s elements after every optimizer step."""
    params = _region_params(model, region)
    frozen = {n: params[n].detach().view(-1)[region[n]].clone() for n in params}

    def restore() -> None:
        with torch.no_grad():
            for n, p in params.items():
                p.data.view(-1)[region[n]] = frozen[n]

    info = continued_pretraining(model, docs, settings, pad_id, checkpoint, restore)
    info["frozen_elements"] = int(sum(i.numel() for i in region.values()))
    return info


# --------------------------------------------------------------- rule helper


def training_run(params, corpus: str, threads: int, **identity: str):
    """What a training rule starts from: ``(model, tokenizer, docs, checkpoint)``.

    ``params``: the rule's params (model_path, dtype, settings, checkpoint_dir,
    checkpoint_every). The checkpoint is keyed by the settings, the model,
    ``identity`` (language, region ...) and the source of this module, so stale
    state is never resumed.
    """
    settings = params.settings
    model, tokenizer = load_model(params.model_path, params.dtype, threads)
    texts = sample_texts(corpus, "train", settings["n_docs"])
    docs = training_documents(tokenizer, texts, settings["max_length"])
    code = source_hash(sys.modules[__name__])
    key = {**settings, **identity, "model": params.model_path, "code": code}
    checkpoint = TrainingCheckpoint(params.checkpoint_dir, key, params.checkpoint_every)
    return model, tokenizer, docs, checkpoint


# ------------------------------------------------------------------- summary


def region_summary(model: nn.Module, regions: Mapping[str, pa.Table], prefix: str):
    """Per region and parameter tensor: size, share of the tensor, exact zeros in the weights.

    Columns: region, layer, module, kind, numel, n_selected, share, n_zero_weight
    (selected elements whose weight is exactly 0; the dequantized GGUF has many).
    """
    import pandas as pd

    params = dict(model.named_parameters())
    rows = []
    for region, table in regions.items():
        for name, idx in region_indices(table).items():
            flat = params[name].detach().reshape(-1)
            rows.append(
                {
                    "region": region,
                    "layer": param_layer(name, prefix),
                    "module": param_module(name, prefix),
                    "kind": param_kind(name, params[name].ndim),
                    "numel": flat.numel(),
                    "n_selected": idx.numel(),
                    "share": idx.numel() / flat.numel(),
                    "n_zero_weight": int((flat[idx] == 0).sum()),
                }
            )
    return pd.DataFrame(rows)


# -------------------------------------------------------------- perturbation


def perturbation_table(
    model: nn.Module,
    tokenizer,
    region: str,
    table: pa.Table,
    eval_texts: Mapping[str, Sequence[str]],
    how: str = "zero",
    scale: float = 1.0,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    **ppl_kwargs,
) -> pa.Table:
    """Perplexity in every evaluation language with ``region`` perturbed, and without.

    Rows follow ``ablation.MATRIX_COLUMNS``: one ``base`` row per language, then one
    row with ``setting`` = the region name (``monolingual_L`` gives setting
    ``monolingual`` and target_lang L) and ``n_units`` = elements perturbed.
    """
    from workflow_scripts.evaluation.ablation import MATRIX_COLUMNS, perplexity

    indices = region_indices(table, kinds)
    n_units = int(sum(i.numel() for i in indices.values()))
    setting, _, target = region.partition("_")
    rows = []
    for lang, texts in eval_texts.items():
        base = perplexity(model, tokenizer, texts, **ppl_kwargs).ppl
        rows.append(("base", None, lang, 0, base, base, -1))
    with perturbed(model, indices, how, scale, seed):
        for i, (lang, texts) in enumerate(eval_texts.items()):
            ppl = perplexity(model, tokenizer, texts, **ppl_kwargs).ppl
            base = rows[i][4]
            rows.append((setting, target or None, lang, n_units, ppl, base, seed))
            log.info("region %s (%s) on %s: PPL %.4g (base %.4g)", region, how, lang, ppl, base)
    columns = list(zip(*rows, strict=True))
    types = [pa.string(), pa.string(), pa.string(), pa.int64(), pa.float64(), pa.float64()]
    return pa.table(
        {
            name: pa.array(col, typ)
            for name, col, typ in zip(MATRIX_COLUMNS, columns, [*types, pa.int64()], strict=True)
        }
    )

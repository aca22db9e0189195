"""Tiny models pretrained by the workflow itself, so everything runs offline.

A byte-level BPE tokenizer is trained with ``tokenizers`` on the train split
of the given corpus files, a stock ``transformers`` architecture (qwen2, llama,
mistral, gemma3_text, gpt2, bloom ...) is built with ``AutoConfig.for_model``
and pretrained with AdamW on language-balanced blocks of text. Seeded: the
same inputs, seed and thread count give the same weights.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from workflow_scripts.data.corpus import corpus_texts
from workflow_scripts.io import atomic_path
from workflow_scripts.training import loop as training_loop
from workflow_scripts.training.checkpoints import TrainingCheckpoint, source_hash
from workflow_scripts.training.loop import TorchTrainer, train_steps

log = logging.getLogger(__name__)

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer that prepends ``<s>`` to every sequence."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def build_config(architecture: str, tokenizer, spec: Mapping[str, Any]):
    """A ``transformers`` config for ``architecture`` with the generic sizes of ``spec``."""
    sizes = {
        "hidden_size": spec["hidden_size"],
        "num_hidden_layers": spec["num_layers"],
        "num_attention_heads": spec["num_heads"],
        # room for prompts + generation beyond the training length (GPT-2 has a fixed table)
        "max_position_embeddings": max(spec["seq_len"], 2048),
    }
    if architecture == "gpt2":
        sizes["n_inner"] = spec["intermediate_size"]
    elif architecture != "bloom":  # Bloom's MLP is always 4 x hidden
        sizes["intermediate_size"] = spec["intermediate_size"]
        sizes["num_key_value_heads"] = spec.get("num_kv_heads", spec["num_heads"])
    if architecture.startswith("gemma"):
        sizes["head_dim"] = spec["hidden_size"] // spec["num_heads"]
    sizes.update(_moe_sizes(architecture, spec))
    try:
        return AutoConfig.for_model(
            architecture,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            **sizes,
        )
    except ValueError as err:
        raise ValueError(f"tiny model: unknown architecture {architecture!r} ({err})") from err


# mixture-of-experts families: config key of the number of experts and of one expert's width
MOE_KEYS = {
    "mixtral": ("num_local_experts", "intermediate_size"),
    "qwen2_moe": ("num_experts", "moe_intermediate_size"),
}


def _moe_sizes(architecture: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Experts of a tiny MoE config: ``num_experts`` (4), ``experts_per_token`` (2), one
    expert's width ``expert_size`` (intermediate_size) and, for Qwen2-MoE, the shared
    expert's ``shared_expert_size`` and its dense layers ``mlp_only_layers``."""
    if architecture not in MOE_KEYS:
        return {}
    n_key, width_key = MOE_KEYS[architecture]
    sizes = {
        n_key: spec.get("num_experts", 4),
        "num_experts_per_tok": spec.get("experts_per_token", 2),
        width_key: spec.get("expert_size", spec["intermediate_size"]),
    }
    if architecture == "qwen2_moe":
        sizes["shared_expert_intermediate_size"] = spec.get(
            "shared_expert_size", spec["intermediate_size"]
        )
        sizes["mlp_only_layers"] = list(spec.get("mlp_only_layers", []))
    return sizes


def language_blocks(
    tokenizer, texts_by_lang: Mapping[str, Sequence[str]], seq_len: int
) -> list[torch.Tensor]:
    """Blocks of ``seq_len`` tokens per language, interleaved round-robin across languages."""
    per_lang = []
    for lang, texts in texts_by_lang.items():
        ids: list[int] = []
        for enc in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
            ids.extend([*enc, tokenizer.eos_token_id])
        blocks = [
            torch.tensor(ids[i : i + seq_len], device="cpu")
            for i in range(0, len(ids) - seq_len + 1, seq_len)
        ]
        if not blocks:
            raise ValueError(f"tiny model: the {lang!r} training text is shorter than one block")
        per_lang.append(blocks)
    mixed = [b for group in itertools.zip_longest(*per_lang) for b in group if b is not None]
    return mixed


def block_batches(blocks: Sequence[torch.Tensor], batch_size: int) -> Iterator[dict]:
    """Endless batches of ``batch_size`` consecutive blocks (cycling), labels = inputs."""
    for step in itertools.count():
        idx = [(step * batch_size + j) % len(blocks) for j in range(batch_size)]
        batch = torch.stack([blocks[i] for i in idx])
        yield {"input_ids": batch, "labels": batch}


def pretrain(
    corpora: Mapping[str, str | Path],
    spec: Mapping[str, Any],
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict:
    """Train tokenizer and model on the train split of ``corpora`` (lang -> corpus file).

    Writes a Hugging Face model directory (weights, config, tokenizer) plus
    ``training.json`` (loss curve, timings) atomically to ``out_dir``. With
    ``checkpoint_dir``, the training state is saved every
    ``spec["checkpoint_every"]`` steps and a re-run resumes from it. ``device``: where
    it trains (a ``placement.device`` setting; ``auto`` = CUDA if available).
    """
    from workflow_scripts.models.placement import resolve_device

    seed = spec.get("seed", 0)
    random.seed(seed)
    torch.manual_seed(seed)
    texts = {lang: list(corpus_texts([path], "train")) for lang, path in corpora.items()}
    t0 = time.time()
    tokenizer = train_tokenizer([t for ts in texts.values() for t in ts], spec["vocab_size"])
    t_tok = time.time() - t0
    config = build_config(spec["architecture"], tokenizer, spec)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    where = resolve_device(device)
    model.to(where)
    log.info("tiny %s trains on %s", spec["architecture"], where)
    blocks = language_blocks(tokenizer, texts, spec["seq_len"])
    random.Random(seed).shuffle(blocks)
    steps, batch_size = spec["steps"], spec["batch_size"]
    warmup = max(1, int(spec.get("warmup", 0.05) * steps))
    trainer = TorchTrainer(
        model,
        {"lr": spec["lr"], "weight_decay": spec.get("weight_decay", 0.01)},
        schedule=lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps))),
    )
    checkpoint = TrainingCheckpoint(
        checkpoint_dir or Path(out_dir).with_name(f".{Path(out_dir).name}.checkpoint"),
        {
            "code": source_hash(sys.modules[__name__], training_loop),
            "spec": {k: v for k, v in spec.items() if k != "checkpoint_every"},
            "corpora": sorted(map(str, corpora.values())),
        },
        spec.get("checkpoint_every", 100) if checkpoint_dir else 0,
    )
    run = train_steps(trainer, block_batches(blocks, batch_size), steps, checkpoint, log_every=50)
    losses, start = [round(x, 4) for x in run["losses"]], run["resumed_at_step"]
    info = {
        "architecture": spec["architecture"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "languages": sorted(texts),
        "train_blocks": len(blocks),
        "tokens_seen": steps * batch_size * spec["seq_len"],
        "tokenizer_seconds": round(t_tok, 2),
        "train_seconds": round(run["train_seconds"], 2),
        "resumed_at_step": start,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "spec": {k: spec[k] for k in spec},
    }
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(info, indent=1))
    checkpoint.clear()
    log.info(
        "tiny %s: %d parameters, loss %.2f -> %.2f",
        spec["architecture"],
        info["parameters"],
        losses[0],
        losses[-1],
    )
    return info

"""GPU memory a model's jobs need, per stage, from its config alone (nothing downloaded).

    python bench/memory_estimate.py qwen2.5-7b llama-3.1-70b
    python bench/memory_estimate.py /path/to/model_dir --dtype bfloat16

The model is built on the ``meta`` device (no memory), its parameter bytes counted, and
each stage's batch estimated by ``workflow_scripts.models.memory.estimate_bytes`` (the
same estimate every job logs and checks before it computes) with the GPU batch sizes of
``placement.batch_size`` and each stage's default ``max_length``. Presets carry the
published configs of two models the README's cluster section uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.config import schema_defaults
from workflow_scripts.models.memory import GIB, estimate_bytes, parameter_bytes

STAGES = ("actcount", "lape", "plnd", "logit_lens", "ablation")
PRESETS = {  # published config.json values
    "qwen2.5-7b": (
        "qwen2",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
    ),
    "llama-3.1-70b": (
        "llama",
        dict(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=False,
        ),
    ),
}


def meta_model(name: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    if name in PRESETS:
        model_type, dims = PRESETS[name]
        config = AutoConfig.for_model(model_type, **dims)
    else:
        config = AutoConfig.from_pretrained(name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "models", nargs="+", help=f"a preset ({', '.join(PRESETS)}) or a model directory"
    )
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = ap.parse_args()
    gpu_batch = schema_defaults("placement")["batch_size"]
    lengths = {
        s: schema_defaults(s)["max_length"]
        for s in ("lape", "plnd", "logit_lens", "ablation", "regions")
    }
    lengths["actcount"] = schema_defaults("actcount")["max_length"]
    new_tokens = schema_defaults("actcount")["max_new_tokens"]
    regions_batch = schema_defaults("regions")["batch_size"]
    for name in args.models:
        model = meta_model(name, getattr(torch, args.dtype))
        weights = parameter_bytes(model)
        print(
            f"{name} ({args.dtype}): {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, "
            f"weights {weights / GIB:.1f} GiB"
        )
        rows = [(s, gpu_batch[s], True) for s in STAGES]
        rows += [("regions", regions_batch, False), ("regions", regions_batch, True)]
        for stage, batch, optimizer in rows:
            new = new_tokens if stage == "actcount" else 0
            need = estimate_bytes(model, stage, batch, lengths[stage], new, optimizer)
            label = {False: "grad x param", True: "delta/freeze"}[optimizer]
            print(
                f"  {stage if stage != 'regions' else label:<13} batch {batch:>2} x "
                f"{lengths[stage] + new:>4} tokens: {need / GIB:6.1f} GiB + weights = "
                f"{(need + weights) / GIB:6.1f} GiB"
            )


if __name__ == "__main__":
    main()

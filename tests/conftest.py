"""Shared fixtures: a tiny tokenizer, tiny random models of every supported architecture,
and a writer of small corpora in the prepared format.

Nothing here downloads anything: the Hugging Face libraries are forced offline
before they are imported.
"""

from __future__ import annotations

import contextlib
import math
import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

# Tiny models: one thread is fastest, and much faster than two when another job
# keeps a core busy (intra-op threads then wait on each other at every op).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from workflow_scripts.data.corpus import CORPUS_COLUMNS, split_of  # noqa: E402
from workflow_scripts.io import write_parquet  # noqa: E402
from workflow_scripts.models.tiny import build_config, train_tokenizer  # noqa: E402

BUNDLED = REPO / "resources" / "corpus" / "bundled.parquet"
SCHEMA = REPO / "resources" / "schemas" / "config.schema.yaml"
CONFIGS = REPO / "tests" / "configs"

ARCHS = ["qwen2", "llama", "mistral", "gemma3_text", "gpt2", "bloom", "phi3", "olmo2", "starcoder2"]
ARCHS.append("gpt_neox")  # Pythia: parallel blocks, partial rotary, interleaved qkv
GATED = {a: True for a in ("qwen2", "llama", "mistral", "gemma3_text", "phi3", "olmo2")}
# architecture id used by the tests -> (transformers model_type, extra spec)
MODEL_CASES = {arch: (arch, {}) for arch in ARCHS}
MODEL_CASES["qwen2_gqa"] = ("qwen2", {"num_heads": 4, "num_kv_heads": 2})
# plain GELU MLP with biases, attention biases, a sliding window shorter than the test texts
MODEL_CASES["starcoder2"] = ("starcoder2", {"sliding_window": 4})
MODEL_IDS = list(MODEL_CASES)
# mixture-of-experts (own tests, tests/test_moe.py): Mixtral, 4 experts of width 64, top 2;
# Qwen2-MoE, 4 experts of width 16, a shared expert, and a dense MLP in layer 1
MOE_CASES = {
    "mixtral": ("mixtral", {}),
    "qwen2_moe": ("qwen2_moe", {"expert_size": 16, "mlp_only_layers": [1]}),
}

TINY_SPEC = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 4,
    "seq_len": 128,
}

_WORDS = {
    "en": "the cat dog house river city people water light small green morning reads "
    "writes runs sees likes quickly today always never under over near".split(),
    "fr": "le chat chien maison rivière ville gens eau lumière petit vert matin lit "
    "écrit court voit aime vite aujourd'hui toujours jamais sous sur près".split(),
    "de": "der Hund Katze Haus Fluss Stadt Leute Wasser Licht klein grün Morgen liest "
    "schreibt läuft sieht mag schnell heute immer nie unter über nahe".split(),
    "ru": "кот собака дом река город люди вода свет маленький зелёный утро читает "
    "пишет бежит видит любит быстро сегодня всегда никогда под над".split(),
    "zh": list("猫狗房子河城市人们水光小绿早上读写跑看喜欢快今天总是从不下上近"),
}


def synthetic_sentences(n_per_lang: int = 60, seed: int = 0) -> dict[str, list[str]]:
    """Short random sentences per language (deterministic)."""
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for lang, words in _WORDS.items():
        sep = "" if lang == "zh" else " "
        end = "。" if lang == "zh" else "."
        out[lang] = [
            sep.join(rng.choice(words) for _ in range(rng.randint(4, 12))) + end
            for _ in range(n_per_lang)
        ]
    return out


@pytest.fixture(scope="session")
def sentences() -> dict[str, list[str]]:
    return synthetic_sentences()


@pytest.fixture(scope="session")
def tiny_tokenizer(sentences):
    texts = [s for lang in sentences.values() for s in lang]
    return train_tokenizer(texts, 400)


def make_model(tokenizer, arch: str = "qwen2", **spec_overrides):
    """A random tiny model of test case ``arch`` (see MODEL_CASES), seeded, in eval mode."""
    model_type, extra = {**MODEL_CASES, **MOE_CASES}[arch]
    spec = {**TINY_SPEC, **extra, **spec_overrides}
    config = build_config(model_type, tokenizer, spec)
    if "sliding_window" in spec:
        config.sliding_window = spec["sliding_window"]
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def direct_activation(model_type: str, mlp: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Neuron activations of one MLP computed from its input ``h`` and its raw weights.

    Independent of :mod:`workflow_scripts.models.anatomy`: gated MLPs ``act(h @ W_gate^T)``
    (SiLU; GELU-tanh for Gemma 3; Phi-3's gate is the first half of the rows of its fused
    ``gate_up_proj``), GPT-2 ``gelu_new(h @ W_fc + b)`` (Conv1D weight is ``[in, out]``),
    Bloom and StarCoder2 ``gelu_tanh(h @ W^T + b)``, GPT-NeoX ``gelu(h @ W^T + b)``.
    """
    if model_type == "phi3":
        w = mlp.gate_up_proj.weight
        return F.silu(h @ w[: w.shape[0] // 2].T)
    if model_type == "gpt2":
        pre = h @ mlp.c_fc.weight + mlp.c_fc.bias
        return 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3)))
    if model_type in ("bloom", "starcoder2"):
        lin = mlp.dense_h_to_4h if model_type == "bloom" else mlp.c_fc
        return F.gelu(h @ lin.weight.T + lin.bias, approximate="tanh")
    if model_type == "gpt_neox":  # exact GELU
        return F.gelu(h @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias)
    gate = mlp.gate_proj
    pre = h @ gate.weight.T
    if gate.bias is not None:
        pre = pre + gate.bias
    if model_type.startswith("gemma"):
        return F.gelu(pre, approximate="tanh")
    return F.silu(pre)


@contextlib.contextmanager
def direct_capture(model: torch.nn.Module):
    """Yield ``acts``: layer -> list of direct activations ``[B, T, I]``, one per forward.

    Hooks only the MLP modules' *inputs* (own forward pre-hooks) and computes the
    activation from the weights with :func:`direct_activation`.
    """
    from workflow_scripts.models.anatomy import decoder_layers

    model_type = model.config.model_type
    acts: dict[int, list[torch.Tensor]] = {}
    handles = []
    for i, block in enumerate(decoder_layers(model)):
        mlp = block.mlp

        def hook(_m, args, layer=i, mlp=mlp):
            with torch.no_grad():
                acts.setdefault(layer, []).append(direct_activation(model_type, mlp, args[0]))

        handles.append(mlp.register_forward_pre_hook(hook))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def forward_with_hooks(model: torch.nn.Module, enc: Mapping, handles: list) -> None:
    """One no-grad forward of ``model`` on ``enc``; the hook ``handles`` removed after it,
    whatever happens."""
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        for h in handles:
            h.remove()


def near_ties(score, a, b, rel: float) -> tuple[int, int]:
    """Two boolean selections ``a`` (float32) and ``b`` (another precision or device) of
    neurons with float32 scores ``score`` (higher = selected first): (how many differ, how
    many of those lie further than ``rel`` (relative) from the float32 selection threshold).
    A difference within ``rel`` of the threshold is a near-tie, which precision may flip."""
    import numpy as np

    differ = np.flatnonzero(a != b)
    threshold = score[a].min() if a.any() else 0.0
    far = np.abs(score[differ] - threshold) > rel * max(abs(threshold), 1e-12)
    return len(differ), int(far.sum())


@pytest.fixture
def tiny_model(tiny_tokenizer) -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_model("llama")`` -> a fresh random model (seed 0, eval mode)."""

    def factory(arch: str = "qwen2", **spec_overrides):
        return make_model(tiny_tokenizer, arch, **spec_overrides)

    return factory


def write_corpus(
    path: str | os.PathLike,
    docs: Iterable[str | Mapping[str, str]],
    eval_fraction: float | None = None,
) -> Path:
    """Write a prepared corpus Parquet (columns doc_id, text, split, source, group_id).

    ``docs``: texts (doc ids ``d0, d1 ...``, split ``eval``) or dicts with at least
    ``text`` and optionally ``doc_id``, ``split``, ``source``, ``group_id``. With
    ``eval_fraction`` the split is computed by :func:`split_of` of the group.
    """
    rows: dict[str, list[str]] = {c: [] for c in CORPUS_COLUMNS}
    for i, doc in enumerate(docs):
        rec = {"text": doc} if isinstance(doc, str) else dict(doc)
        doc_id = rec.get("doc_id", f"d{i}")
        group = rec.get("group_id", doc_id)
        if "split" in rec:
            split = rec["split"]
        elif eval_fraction is not None:
            split = split_of(group, eval_fraction)
        else:
            split = "eval"
        rows["doc_id"].append(doc_id)
        rows["text"].append(rec["text"])
        rows["split"].append(split)
        rows["source"].append(rec.get("source", "test"))
        rows["group_id"].append(group)
    path = Path(path)
    write_parquet(rows, path)
    return path


@pytest.fixture
def corpus_writer(tmp_path) -> Callable[..., Path]:
    """``corpus_writer("fr", docs)`` -> ``tmp_path/corpus/fr.parquet`` (see :func:`write_corpus`)."""

    def factory(name: str, docs, eval_fraction: float | None = None) -> Path:
        return write_corpus(tmp_path / "corpus" / f"{name}.parquet", docs, eval_fraction)

    return factory


def load_config(name: str, **overrides) -> dict:
    """The test config ``tests/configs/<name>.yaml`` as a fresh dict for :func:`run_snakemake`.

    Its corpus and dataset paths are relative to the repository root (where a user runs
    it); the tests run in a scratch directory, so they are made absolute here. Then each
    keyword replaces that top-level key, e.g. ``load_config("tiny", languages=["en"])``.
    """
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text(encoding="utf-8"))
    for section in ("corpora", "datasets"):
        for spec in cfg.get(section, {}).values():
            if "path" in spec and not Path(spec["path"]).is_absolute():
                spec["path"] = str(REPO / spec["path"])
    cfg.update(overrides)
    return cfg


def snakemake_command(workdir: Path, cfg: dict, *args: str) -> list[str]:
    """The command running the repo's Snakefile in ``workdir`` with config ``cfg`` (written
    beside ``workdir``); run it from ``workdir.parent``."""
    cfg_file = workdir.parent / f"{workdir.name}.config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    return [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "--cores",
        "2",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(cfg_file),
    ]


def run_snakemake(workdir: Path, cfg: dict, *args: str, timeout: int = 1500):
    """Run the repo's Snakefile in ``workdir`` with config ``cfg``; ``(process, output)``."""
    cmd = snakemake_command(workdir, cfg, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir.parent)
    return proc, proc.stdout + proc.stderr

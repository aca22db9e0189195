"""Placement: every stage follows the model's device(s) (workflow_scripts/models/placement.py).

No machine that runs these tests has a GPU, so the CUDA path is proven by construction
and by tests that fail on the bugs a GPU would reveal:

- :class:`tests.device_guard.DeviceGuard` runs each stage and lists every tensor the
  workflow creates without an explicit ``device`` (on a GPU: a host tensor in a device
  computation) and every device-to-host copy; copies must not grow with the tokens;
- a model dispatched by accelerate over ``cpu`` and ``disk`` (its offloaded weights are
  ``meta`` placeholders outside each module's forward, and accelerate's hooks move
  weights and activations between places as between GPUs) gives the plain model's
  tables in every inference stage;
- bfloat16 gives the float32 selections up to near-ties, and perplexities within 2%.
"""

from __future__ import annotations

import copy
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, make_model, near_ties
from device_guard import DeviceGuard

from workflow_scripts.evaluation.ablation import all_units, deactivated, random_like
from workflow_scripts.evaluation.perplexity import perplexity
from workflow_scripts.models import memory, placement
from workflow_scripts.models.loading import load_model
from workflow_scripts.neurons.actcount import count_activations, peak_neurons
from workflow_scripts.neurons.lape import lape_select
from workflow_scripts.neurons.logit_lens import logit_lens
from workflow_scripts.neurons.plnd import PARTS
from workflow_scripts.neurons.selection import plnd_stats
from workflow_scripts.regions.perturbation import perturbed
from workflow_scripts.regions.scores import delta_scores, grad_x_param_scores
from workflow_scripts.training.loop import continued_pretraining, training_documents
from workflow_scripts.training.restrictions import FrozenRegion

PACKAGE = REPO / "workflow_scripts"
PLND = {"variant": "paper", "parts": list(PARTS), "batch_size": 3, "max_length": 32}
PLND["top_fraction"] = 0.1
TRAIN = {"steps": 2, "batch_size": 2, "lr": 1e-3, "seed": 0}


class EvenIds:
    """A stand-in language identifier: even token ids are English, odd ones unknown."""

    def classify_ids(self, _tokenizer, ids):
        return ["en" if i % 2 == 0 else None for i in ids]


def texts_of(sentences, n=6):
    return sentences["en"][:n] + sentences["fr"][:n]


def inference_tables(model, tok, texts) -> dict:
    """The tables of every inference stage on ``model`` (counts, PLND, lens, perplexities)."""
    units = random_like([(0, "mlp", 1), (1, "q", 2), (1, "v", 3), (0, "o", 5)], all_units(model), 0)
    out = {
        "lape": count_activations(model, tok, texts, "all", batch_size=3, max_length=32),
        "actcount": count_activations(model, tok, texts[:4], batch_size=2, max_new_tokens=4),
        "plnd": plnd_stats(model, tok, texts, PLND),
        "lens": logit_lens(model, tok, texts, "en", EvenIds(), top_k=3, max_length=32),
        "ppl": perplexity(model, tok, texts, max_length=32, batch_size=3),
    }
    with deactivated(model, units, "hooks"):
        out["ppl_ablated"] = perplexity(model, tok, texts, max_length=32, batch_size=3)
    return out


def generation_host_copies(model, tok, prompts) -> list[int]:
    """Host copies the guard sees in counting generations of 2 and of 8 new tokens."""
    copies = []
    for new_tokens in (2, 8):
        with DeviceGuard(PACKAGE) as guard:
            count_activations(model, tok, prompts, batch_size=2, max_new_tokens=new_tokens)
        copies.append(len(guard.host))
    return copies


def assert_same_tables(got: dict, ref: dict, rtol: float) -> None:
    for key in ("lape", "actcount"):
        assert torch.equal(got[key].counts, ref[key].counts), key
        assert torch.equal(got[key].n_positions, ref[key].n_positions), key
        assert torch.allclose(got[key].inhibited, ref[key].inhibited, rtol=1e-9), key
    for col in ("layer", "module", "index", "frequency", "n_docs"):
        assert got["plnd"][col].to_pylist() == ref["plnd"][col].to_pylist(), col
    np.testing.assert_allclose(got["plnd"]["score"], ref["plnd"]["score"], rtol=rtol, atol=1e-9)
    assert got["lens"].equals(ref["lens"])
    for key in ("ppl", "ppl_ablated"):
        assert got[key].n_tokens == ref[key].n_tokens
        assert math.isclose(got[key].ppl, ref[key].ppl, rel_tol=rtol), key


# ------------------------------------------------------------------ config -> device


def test_resolve_device(monkeypatch):
    assert placement.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert placement.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            placement.resolve_device("cuda:1")
    with pytest.raises((ValueError, RuntimeError)):
        placement.resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement.resolve_device("auto") == torch.device("cuda")


def test_load_kwargs_and_gpu_batch_sizes(tiny_tokenizer):
    assert placement.load_kwargs({"device": "auto"}) == {}
    got = placement.load_kwargs({"device_map": {"model.layers.0": 1}, "max_memory": {"0": "1GiB"}})
    assert got == {"device_map": {"model.layers.0": 1}, "max_memory": {0: "1GiB"}}
    with pytest.raises(ValueError, match="device_map 'everywhere'"):
        placement.load_kwargs({"device_map": "everywhere"})
    model = make_model(tiny_tokenizer)
    where = {"batch_size": {"plnd": 16}}
    assert placement.batch_size_for(model, where, "plnd", 4) == 4  # on the CPU: the stage's own
    model.get_input_embeddings()._hf_hook = type("H", (), {"execution_device": 0})()
    assert placement.input_device(model) == torch.device("cuda:0")
    assert placement.batch_size_for(model, where, "plnd", 4) == 16
    assert placement.batch_size_for(model, where, "regions", 4) == 4  # training keeps its own


def test_placement_config_merges_gpu_batch_sizes():
    from workflow_scripts.config import placement_of

    cfg = {
        "placement": {"batch_size": {"plnd": 4}},
        "models": {"m": {"placement": {"device": "cpu", "batch_size": {"lape": 64}}}},
    }
    got = placement_of(cfg, "m")
    assert got["device"] == "cpu"
    assert got["batch_size"]["plnd"] == 4 and got["batch_size"]["lape"] == 64
    assert got["batch_size"]["actcount"] == 32  # the schema default


# -------------------------------------------------------------- memory, before compute


def test_memory_check_fails_fast_naming_the_setting(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    need = memory.check_fits(model, "plnd", 4, 64, free=2**40)
    assert need > 0
    assert memory.estimate_bytes(model, "plnd", 8, 64) > memory.estimate_bytes(model, "plnd", 4, 64)
    with pytest.raises(MemoryError, match=r"lower placement\.batch_size\.plnd"):
        memory.check_fits(model, "plnd", 4, 64, setting="placement.batch_size.plnd", free=need - 1)
    assert memory.free_bytes(torch.device("cpu")) > 0


def test_model_job_reads_placement_and_checks_memory(tiny_tokenizer, tmp_path, monkeypatch, caplog):
    """What a model job does before it computes: load where the config says, pick the
    device's batch size, log the memory estimate, stop at once if it cannot fit."""
    from workflow_scripts.steps import _step

    make_model(tiny_tokenizer).save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    params = SimpleNamespace(
        model_path=str(tmp_path / "m"),
        dtype="float32",
        settings={"batch_size": 4, "max_length": 32},
    )
    cfg = {
        "placement": {"batch_size": {"plnd": 16}},
        "models": {"m": {"placement": {"device": "cpu"}}},
    }
    sm = SimpleNamespace(config=cfg, wildcards=SimpleNamespace(model="m"), params=params, threads=1)
    with caplog.at_level(logging.INFO):
        model, _, settings = _step.model_of(sm, "plnd")
    assert settings["batch_size"] == 4  # on the CPU: the stage's own
    assert placement.input_device(model).type == "cpu"
    assert "model computes on cpu" in caplog.text and "memory: parameters" in caplog.text
    monkeypatch.setattr(memory, "free_bytes", lambda _device: 1000)
    with pytest.raises(MemoryError, match=r"lower plnd\.batch_size"):
        _step.model_of(sm, "plnd")


# ------------------------------------------------------- tensors follow the device


def test_no_implicit_devices_and_no_per_token_copies(tiny_tokenizer, sentences):
    """Every stage, inference and training, under the guard: nothing is created without a
    device, and the host copies of generation do not grow with the generated tokens."""
    model = make_model(tiny_tokenizer, "qwen2_gqa")
    texts = texts_of(sentences)
    with DeviceGuard(PACKAGE) as guard:
        inference_tables(model, tiny_tokenizer, texts)
        docs = training_documents(tiny_tokenizer, texts, 32)
        region = {"model.layers.0.mlp.down_proj.weight": torch.arange(5, device="cpu")}
        with perturbed(model, region, "noise", 0.1):
            pass
        grad_x_param_scores(copy.deepcopy(model), docs, {"batch_size": 3}, 0)
        delta_scores(copy.deepcopy(model), docs, TRAIN, 0)
        continued_pretraining(copy.deepcopy(model), docs, TRAIN, 0, None, FrozenRegion(region))
    assert guard.implicit == [], guard.implicit
    copies = generation_host_copies(model, tiny_tokenizer, texts[:4])
    assert copies[0] == copies[1], f"host copies grow with generated tokens: {copies}"


def test_mixture_of_experts_stages_under_the_guard(tiny_tokenizer, sentences):
    """Counting per expert, routing statistics, PLND's expert parts and expert ablation
    create nothing without a device; generation copies to the host only the experts' group
    sizes, once per mixture-of-experts layer and forward call (the routing decides the
    shapes: transformers' own experts loop syncs there too)."""
    from workflow_scripts.neurons.routing import routing_counts

    model = make_model(tiny_tokenizer, "qwen2_moe")
    texts = texts_of(sentences)
    units = [(0, "mlp.e1", 3), (0, "mlp.shared", 2), (0, "expert", 0), (1, "mlp", 4)]
    with DeviceGuard(PACKAGE) as guard:
        count_activations(model, tiny_tokenizer, texts, "all", batch_size=3, max_length=32)
        routing_counts(model, tiny_tokenizer, texts, batch_size=3, max_length=32)
        plnd_stats(model, tiny_tokenizer, texts, PLND)
        for mode in ("hooks", "weights"):
            with deactivated(model, units, mode):
                perplexity(model, tiny_tokenizer, texts, max_length=32, batch_size=3)
    assert guard.implicit == [], guard.implicit
    copies = generation_host_copies(model, tiny_tokenizer, texts[:4])
    n_moe_layers, n_batches, extra_tokens = 1, 2, 8 - 2
    assert copies[1] - copies[0] == n_moe_layers * n_batches * extra_tokens, copies


def test_interventions_and_steering_under_the_guard(tiny_tokenizer, sentences):
    """Unit statistics, every unit intervention, DiffMean steering and steered generation
    create nothing without a device, and steered generation's host copies do not grow
    with the generated tokens (one copy of the new ids per prompt and batch)."""
    from workflow_scripts.evaluation.generation import greedy_continuations
    from workflow_scripts.evaluation.interventions import Intervention, intervened, steered
    from workflow_scripts.evaluation.unit_stats import unit_statistics

    model = make_model(tiny_tokenizer, "qwen2_gqa")
    texts = texts_of(sentences)
    units = [(0, "mlp", 1), (1, "q", 2), (1, "v", 3), (0, "o", 5)]
    with DeviceGuard(PACKAGE) as guard:
        table, hidden, _ = unit_statistics(
            model, tiny_tokenizer, texts, max_length=32, batch_size=3
        )
        keys = zip(*(table[c].to_pylist() for c in ("layer", "module", "index")), strict=True)
        values = dict(zip(keys, table["mean"].to_pylist(), strict=True))
        mu = torch.tensor(hidden["mean"].to_pylist()[0], device="cpu")
        for iv in (Intervention("scale", 2.0), Intervention("mean"), Intervention("set", 3.0)):
            with intervened(model, units, iv, values):
                perplexity(model, tiny_tokenizer, texts, max_length=32, batch_size=3)
        with steered(model, {0: mu}, 0.5):
            perplexity(model, tiny_tokenizer, texts, max_length=32, batch_size=3)
    assert guard.implicit == [], guard.implicit
    copies = []
    for new_tokens in (2, 8):
        with DeviceGuard(PACKAGE) as guard:
            with (
                intervened(model, units, Intervention("set", 2.0), values),
                steered(model, {0: mu}, 0.5),
            ):
                greedy_continuations(model, tiny_tokenizer, texts[:4], new_tokens, batch_size=2)
        copies.append(len(guard.host))
    assert copies[0] == copies[1], f"host copies grow with generated tokens: {copies}"


def test_guard_catches_a_host_tensor_in_a_hook(tiny_tokenizer):
    """The guard itself: a hook that creates its accumulator without a device is caught."""
    model = make_model(tiny_tokenizer)

    def bad_hook(_m, _a, out):
        torch.zeros(out.shape[-1])  # the bug: lands on the host on a GPU

    handle = model.model.layers[0].mlp.register_forward_hook(bad_hook)
    try:
        with DeviceGuard(REPO / "tests") as guard:
            model(torch.tensor([[1, 2, 3]], device="cpu"))
    finally:
        handle.remove()
    assert len(guard.implicit) == 1 and "torch.zeros" in guard.implicit[0]


# ----------------------------------------------- accelerate dispatch (cpu + disk)


def test_dispatched_model_gives_the_plain_tables(tiny_tokenizer, sentences, tmp_path):
    """Layers 1-2 offloaded to disk by accelerate: every inference table as the plain model."""
    model = make_model(tiny_tokenizer, "qwen2_gqa", num_layers=3)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    texts = texts_of(sentences)
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    where = {"device": "cpu", "device_map": device_map, "offload_folder": str(tmp_path / "off")}
    dispatched, tok = load_model(tmp_path / "m", placement=where)
    assert dispatched.hf_device_map["model.layers.1"] == "disk"
    assert dispatched.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    plain, _ = load_model(tmp_path / "m")
    ref = inference_tables(plain, tok, texts)
    got = inference_tables(dispatched, tok, texts)
    assert_same_tables(got, ref, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="offloaded by its device_map"):
        with deactivated(dispatched, [(1, "mlp", 0)], "weights"):
            pass


# --------------------------------------------------------------- half precision


def test_bfloat16_gives_the_float32_selections_up_to_ties(tiny_tokenizer, sentences, capsys):
    model = make_model(tiny_tokenizer, "qwen2_gqa", num_layers=3)
    half = copy.deepcopy(model).to(torch.bfloat16)
    texts = {lang: sentences[lang][:12] for lang in ("en", "fr", "de")}
    report = []

    def probs(m):
        out = []
        for lang in texts:
            c = count_activations(
                m, tiny_tokenizer, texts[lang], "all", batch_size=4, max_length=32
            )
            out.append((c.counts / c.n_positions[:, None]).numpy())
        return np.stack(out)

    p32, p16 = probs(model), probs(half)
    s32, s16 = lape_select(p32, 0.05), lape_select(p16, 0.05)
    n, far = near_ties(-s32.entropy.ravel(), s32.selected.ravel(), s16.selected.ravel(), 0.2)
    report.append(f"LAPE: {n} of {s32.selected.sum()} selected differ, {far} beyond near-ties")
    assert far <= max(1, 0.1 * s32.selected.sum())
    peaks32, peaks16 = (peak_neurons(p[0], 0.1).ravel() for p in (p32, p16))
    n, far = near_ties(p32[0].ravel(), peaks32, peaks16, 0.1)
    report.append(f"actcount peaks: {n} of {peaks32.sum()} differ, {far} beyond near-ties")
    assert far <= max(1, 0.1 * peaks32.sum())
    t32, t16 = (plnd_stats(m, tiny_tokenizer, texts["en"], PLND) for m in (model, half))
    f32, f16 = (t["frequency"].to_numpy() for t in (t32, t16))
    sel32, sel16 = f32 == f32.max(), f16 == f16.max()
    n, far = near_ties(t32["score"].to_numpy(), sel32, sel16, 0.5)
    report.append(f"PLND always-important: {n} of {sel32.sum()} differ, {far} beyond near-ties")
    assert (sel32 & sel16).sum() >= 0.9 * sel32.sum()
    np.testing.assert_allclose(t16["score"], t32["score"], rtol=0.1, atol=1e-3)
    ppl32, ppl16 = (perplexity(m, tiny_tokenizer, texts["en"]).ppl for m in (model, half))
    report.append(f"perplexity: {ppl32:.4f} float32, {ppl16:.4f} bfloat16")
    assert math.isclose(ppl16, ppl32, rel_tol=0.02)
    lens32, lens16 = (
        logit_lens(m, tiny_tokenizer, texts["en"], "en", EvenIds(), top_k=3) for m in (model, half)
    )
    shift = np.abs(lens32["ratio"].to_numpy() - lens16["ratio"].to_numpy()).max()
    report.append(f"logit lens: category shares move by at most {shift:.3f}")
    assert shift <= 0.05
    docs = training_documents(tiny_tokenizer, texts["en"], 32)
    g32, g16 = (
        grad_x_param_scores(copy.deepcopy(m), docs, {"batch_size": 4}, 0)[0] for m in (model, half)
    )
    top = {}
    for name, g in (("f32", g32), ("bf16", g16)):
        flat = torch.cat([t.ravel() for t in g.values()])
        top[name] = set(flat.topk(max(1, flat.numel() // 100)).indices.tolist())
    overlap = len(top["f32"] & top["bf16"]) / len(top["f32"])
    report.append(f"grad x param top 1%: {overlap:.1%} shared")
    assert overlap >= 0.8
    with capsys.disabled():
        print("\nbfloat16 vs float32 (tiny qwen2):", "; ".join(report))


def test_job_threads_capped_by_cpu_affinity(monkeypatch):
    """A job told 8 threads on a 2-core allocation starts torch with 2, even when the
    machine has more cores than the process may use (SLURM, cgroups, taskset)."""
    from workflow_scripts.steps import _step

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert _step.threads(SimpleNamespace(threads=8)) == 2
    assert _step.threads(SimpleNamespace(threads=1)) == 1

"""Linguistic regions: scores against direct computations, selection against numpy,
perturbation and region-freeze training on tiny models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import make_model
from safetensors.numpy import save_file

from workflow_scripts.evaluation.ablation import MATRIX_SCHEMA
from workflow_scripts.models.anatomy import param_kind, region_parameters
from workflow_scripts.models.padding import pad_id
from workflow_scripts.regions.perturbation import perturbation_table, perturbed
from workflow_scripts.regions.scores import (
    delta_scores,
    grad_x_param_scores,
    read_score_names,
    write_scores,
)
from workflow_scripts.regions.selection import (
    region_indices,
    region_size,
    region_summary,
    select_regions,
)
from workflow_scripts.training.checkpoints import TrainingCheckpoint
from workflow_scripts.training.loop import (
    DeepSpeedTrainer,
    collate,
    continued_pretraining,
    deepspeed_config,
    make_trainer,
    train_steps,
    training_batches,
    training_documents,
)
from workflow_scripts.training.restrictions import FrozenRegion

SETTINGS = {"steps": 4, "batch_size": 3, "lr": 0.01, "weight_decay": 0.01, "seed": 0}


@pytest.fixture
def docs(tiny_tokenizer, sentences):
    return training_documents(tiny_tokenizer, sentences["en"][:10] + sentences["zh"][:10], 64)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text", "gpt2", "bloom", "mixtral", "qwen2_moe"])
def test_region_parameters_are_the_layers(tiny_tokenizer, arch):
    model = make_model(tiny_tokenizer, arch)
    params = region_parameters(model)
    everything = dict(model.named_parameters())
    outside = set(everything) - set(params)
    assert params and outside  # embeddings and the final norm stay outside
    assert all(".0." in n or ".1." in n for n in params)
    assert not any(".0." in n or ".1." in n for n in outside)
    kinds = {param_kind(n, p.ndim) for n, p in params.items()}
    assert "matrix" in kinds and "norm" in kinds


def test_model_without_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="decoder layers"):
        region_parameters(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_long_documents_dropped(tiny_tokenizer, sentences):
    texts = sentences["en"][:5]
    short = training_documents(tiny_tokenizer, texts, 10_000)
    lengths = sorted(len(d) for d in short)
    cut = training_documents(tiny_tokenizer, texts, lengths[2])
    assert len(cut) == 3 and all(len(d) <= lengths[2] for d in cut)
    with pytest.raises(ValueError, match="none of 5 documents"):
        training_documents(tiny_tokenizer, texts, 1)


def test_delta_equals_hand_run_training(tiny_tokenizer, docs):
    model = make_model(tiny_tokenizer)
    hand = copy.deepcopy(model)
    scores, info = delta_scores(model, docs, SETTINGS, pad_id(tiny_tokenizer))
    assert len(info["losses"]) == SETTINGS["steps"]

    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in hand.named_parameters()}
    opt = torch.optim.AdamW(hand.parameters(), lr=0.01, weight_decay=0.01)
    batches = training_batches(docs, 3, 0, pad_id(tiny_tokenizer))
    hand.train()
    for _ in range(SETTINGS["steps"]):
        hand(**next(batches)).loss.backward()
        torch.nn.utils.clip_grad_norm_(hand.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    after = dict(hand.named_parameters())
    assert set(scores) == set(region_parameters(hand))
    for name, score in scores.items():
        torch.testing.assert_close(score, (after[name] - before[name]).abs(), rtol=0, atol=0)
    assert all(bool((s > 0).any()) for s in scores.values())


def test_delta_resumes_after_a_crash(tiny_tokenizer, docs, tmp_path, monkeypatch):
    settings = {**SETTINGS, "steps": 6}
    ref, _ = delta_scores(make_model(tiny_tokenizer), docs, settings, pad_id(tiny_tokenizer))
    ckpt = TrainingCheckpoint(tmp_path / "ckpt", settings, every=2)
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        delta_scores(make_model(tiny_tokenizer), docs, settings, pad_id(tiny_tokenizer), ckpt)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    out, info = delta_scores(
        make_model(tiny_tokenizer), docs, settings, pad_id(tiny_tokenizer), ckpt
    )
    assert info["resumed_at_step"] == 4
    for name in ref:
        assert torch.equal(ref[name], out[name]), name


def _float64(model):
    model.config._experts_implementation = "eager"  # grouped_mm experts have no float64
    return model.double()


@pytest.mark.parametrize("arch", ["qwen2", "mixtral"])
def test_grad_x_param_equals_direct_accumulation(tiny_tokenizer, docs, arch):
    model = _float64(make_model(tiny_tokenizer, arch))
    scores, info = grad_x_param_scores(model, docs, {"batch_size": 4}, pad_id(tiny_tokenizer))
    direct_model = _float64(make_model(tiny_tokenizer, arch))
    params = region_parameters(direct_model)
    names = list(params)
    total = {n: torch.zeros_like(params[n]) for n in names}
    ordered = sorted(docs, key=len)
    for i in range(0, len(ordered), 4):
        loss = direct_model(**collate(ordered[i : i + 4], pad_id(tiny_tokenizer))).loss
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        for n, g in zip(names, grads, strict=True):
            total[n] += g * params[n].detach()
    assert info["batches"] == 5
    for n in names:
        torch.testing.assert_close(scores[n].double(), total[n].abs(), rtol=1e-5, atol=1e-9)


def test_grad_x_param_resumes(tiny_tokenizer, docs, tmp_path, monkeypatch):
    ref, _ = grad_x_param_scores(make_model(tiny_tokenizer), docs, {"batch_size": 4}, 0)
    ckpt = TrainingCheckpoint(tmp_path / "ckpt", {"x": 1}, every=2)
    real = TrainingCheckpoint.maybe_save

    def crash_after_save(self, step, *a, **k):
        saved = real(self, step, *a, **k)
        if step == 4:
            raise RuntimeError("killed")
        return saved

    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", crash_after_save)
    with pytest.raises(RuntimeError):
        grad_x_param_scores(make_model(tiny_tokenizer), docs, {"batch_size": 4}, 0, ckpt)
    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", real)
    out, info = grad_x_param_scores(make_model(tiny_tokenizer), docs, {"batch_size": 4}, 0, ckpt)
    assert info["resumed_at_step"] == 4
    for n in ref:
        torch.testing.assert_close(out[n], ref[n], rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ selection

SHAPES = {
    "model.layers.0.mlp.up_proj.weight": (8, 5),
    "model.layers.0.input_layernorm.weight": (7,),
    "model.layers.1.self_attn.q_proj.bias": (6,),
    "model.layers.1.mlp.down_proj.weight": (5, 8),
}


def score_files(tmp_path, langs=("ar", "ko", "zh"), seed=0):
    rng = np.random.default_rng(seed)
    files = {}
    for lang in langs:
        tensors = {n: rng.random(shape, dtype=np.float32) for n, shape in SHAPES.items()}
        files[lang] = tmp_path / f"{lang}.safetensors"
        save_file(tensors, str(files[lang]))
    return files


def as_sets(table):
    cols = table["param"].to_pylist(), table["flat_index"].to_pylist()
    return set(zip(*cols, strict=True))


def direct_ends(values, k):
    n = max(1, round(k * values.size))
    order = np.argsort(values.reshape(-1))
    return set(order[-n:].tolist()), set(order[:n].tolist())


@pytest.mark.parametrize("score", ["delta", "grad_x_param"])
@pytest.mark.parametrize("k", [0.1, 0.3])
def test_select_regions_equals_numpy(tmp_path, score, k):
    files = score_files(tmp_path)
    regions = select_regions(files, score, k, seed=3)
    from safetensors.numpy import load_file

    data = {lang: load_file(str(path)) for lang, path in files.items()}
    expect = {"top": set(), "bottom": set()}
    own = {lang: set() for lang in files}
    for name in SHAPES:
        top, bottom = direct_ends(sum(d[name] for d in data.values()), k)
        expect["top"] |= {(name, i) for i in top}
        expect["bottom"] |= {(name, i) for i in bottom}
        for lang, d in data.items():
            ends = direct_ends(d[name], k)
            own[lang] |= {(name, i) for i in ends[0 if score == "grad_x_param" else 1]}
    assert as_sets(regions["top"]) == expect["top"]
    assert as_sets(regions["bottom"]) == expect["bottom"]
    core = "top" if score == "grad_x_param" else "bottom"
    assert as_sets(regions["core"]) == expect[core]
    for lang in files:
        others = set().union(*(own[o] for o in files if o != lang))
        assert as_sets(regions[f"monolingual_{lang}"]) == own[lang] - others
    assert regions["random"].num_rows == regions["top"].num_rows
    kinds = dict(zip(*(regions["top"][c].to_pylist() for c in ("param", "kind")), strict=True))
    assert kinds["model.layers.0.input_layernorm.weight"] == "norm"
    assert kinds["model.layers.1.self_attn.q_proj.bias"] == "bias"
    assert kinds["model.layers.1.mlp.down_proj.weight"] == "matrix"
    assert set(regions["top"]["layer"].to_pylist()) == {0, 1}


def test_monolingual_regions_are_disjoint(tmp_path):
    regions = select_regions(score_files(tmp_path), "grad_x_param", 0.3)
    mono = [as_sets(regions[f"monolingual_{lang}"]) for lang in ("ar", "ko", "zh")]
    assert all(mono)
    assert not (mono[0] & mono[1]) and not (mono[0] & mono[2]) and not (mono[1] & mono[2])


def test_random_region_is_seeded(tmp_path):
    files = score_files(tmp_path)
    a = as_sets(select_regions(files, "delta", 0.3, seed=1)["random"])
    b = as_sets(select_regions(files, "delta", 0.3, seed=1)["random"])
    c = as_sets(select_regions(files, "delta", 0.3, seed=2)["random"])
    assert a == b and a != c


@pytest.mark.parametrize("k", [0, -0.1, 0.51, 2])
def test_k_outside_range(tmp_path, k):
    with pytest.raises(ValueError, match=r"k must be in \(0, 0.5\]"):
        select_regions(score_files(tmp_path), "delta", k)


def test_bad_score_files(tmp_path):
    files = score_files(tmp_path)
    save_file({"model.layers.0.other.weight": np.zeros(3, np.float32)}, str(files["ko"]))
    with pytest.raises(ValueError, match="other tensors"):
        select_regions(files, "delta", 0.1)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_score_names(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="score must be"):
        select_regions(files, "magnitude", 0.1)


def test_region_size():
    assert region_size(1000, 0.01) == 10
    assert region_size(7, 0.01) == 1


# ------------------------------------------------------- perturbation, freezing


def model_region(tiny_tokenizer, tmp_path, k=0.1, kinds=("matrix", "norm", "bias")):
    model = make_model(tiny_tokenizer)
    scores = {n: torch.rand(p.shape) for n, p in region_parameters(model).items()}
    write_scores(scores, tmp_path / "en.safetensors", {"lang": "en"})
    regions = select_regions({"en": tmp_path / "en.safetensors"}, "grad_x_param", k)
    return model, regions, region_indices(regions["core"], kinds)


@pytest.mark.parametrize("how", ["zero", "noise", "rescale"])
def test_perturbed_restores_the_model_exactly(tiny_tokenizer, tmp_path, how):
    model, _, region = model_region(tiny_tokenizer, tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.tensor([[1, 5, 9, 13]])
    logits = model(x).logits
    params = dict(model.named_parameters())
    with perturbed(model, region, how, scale=0.5, seed=1):
        changed = model(x).logits
        for name, idx in region.items():
            values = params[name].detach().reshape(-1)[idx]
            old = before[name].reshape(-1)[idx]
            if how == "zero":
                assert not values.any()
            elif how == "rescale":
                assert torch.equal(values, old * 0.5)
            else:
                assert not torch.equal(values, old)
            mask = torch.ones(values.new_empty(params[name].numel()).shape, dtype=torch.bool)
            mask[idx] = False
            assert torch.equal(
                params[name].detach().reshape(-1)[mask], before[name].reshape(-1)[mask]
            )
    assert not torch.equal(changed, logits)
    assert torch.equal(model(x).logits, logits)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_perturbed_restores_after_exception(tiny_tokenizer, tmp_path):
    model, _, region = model_region(tiny_tokenizer, tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(KeyError), perturbed(model, region):
        raise KeyError("boom")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_noise_is_seeded(tiny_tokenizer, tmp_path):
    model, _, region = model_region(tiny_tokenizer, tmp_path)
    x = torch.tensor([[1, 5, 9, 13]])
    outs = []
    for seed in (1, 1, 2):
        with perturbed(model, region, "noise", seed=seed):
            outs.append(model(x).logits)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_freeze_train_keeps_frozen_elements_exact(tiny_tokenizer, tmp_path, docs):
    model, _, region = model_region(tiny_tokenizer, tmp_path, k=0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings, restriction = {**SETTINGS, "steps": 3}, FrozenRegion(region)
    info = continued_pretraining(model, docs, settings, pad_id(tiny_tokenizer), None, restriction)
    assert info["frozen_elements"] == sum(i.numel() for i in region.values())
    moved = free = 0
    for name, p in model.named_parameters():
        flat, old = p.detach().reshape(-1), before[name].reshape(-1)
        if name in region:
            assert torch.equal(flat[region[name]], old[region[name]]), name
            mask = torch.ones(flat.numel(), dtype=torch.bool)
            mask[region[name]] = False
            moved += int((flat[mask] != old[mask]).sum())
            free += int(mask.sum())
    assert moved > 0.5 * free


def test_perturbation_table_and_summary(tiny_tokenizer, tmp_path, sentences):
    model, regions, _ = model_region(tiny_tokenizer, tmp_path)
    texts = {"en": sentences["en"][:3], "zh": sentences["zh"][:3]}
    table = perturbation_table(
        model, tiny_tokenizer, "monolingual_en", regions["monolingual_en"], texts, max_tokens=20
    )
    rows = table.to_pylist()
    assert [r["setting"] for r in rows] == ["base", "base", "monolingual", "monolingual"]
    assert rows[2]["target_lang"] == "en" and rows[2]["n_units"] == regions["core"].num_rows
    assert rows[2]["base_ppl"] == rows[0]["ppl"] and rows[2]["ppl"] != rows[0]["ppl"]
    assert table.schema == MATRIX_SCHEMA
    for r in rows:  # documents' NLL, pooled back to the row's perplexity (20-token budget)
        assert sum(r["doc_tokens"]) == 20
        assert math.exp(sum(r["doc_nll"]) / 20) == pytest.approx(r["ppl"], rel=1e-9)
    only_norms = perturbation_table(
        model, tiny_tokenizer, "top", regions["top"], texts, kinds=["norm"], max_tokens=20
    )
    n_norm = sum(k == "norm" for k in regions["top"]["kind"].to_pylist())
    assert only_norms["n_units"].to_pylist()[-1] == n_norm
    with torch.no_grad():  # make some selected weights exactly zero
        name = next(n for n in region_indices(regions["top"]) if n.endswith("up_proj.weight"))
        idx = region_indices(regions["top"])[name][:3]
        dict(model.named_parameters())[name].view(-1)[idx] = 0
    summary = region_summary(model, regions, "model.layers")
    row = summary[(summary.region == "top") & (summary.module == name.split(".", 3)[3])]
    assert int(row.n_zero_weight.iloc[0]) >= 3
    assert set(summary.kind) == {"matrix", "norm", "bias"}  # qwen2 has q/k/v biases


# ----------------------------------------------------------------- DeepSpeed
# No GPU and no deepspeed package here: the engine path is tested with an object
# that behaves like a DeepSpeed engine (forward, backward, step with clipping).


class FakeEngine:
    """The part of ``deepspeed.DeepSpeedEngine`` the trainer uses, on plain torch."""

    def __init__(self, model, settings):
        self.module = model
        self.config = deepspeed_config(settings)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = self.config["optimizer"]["params"]
        self.optimizer = torch.optim.AdamW(params, lr=opt["lr"], weight_decay=opt["weight_decay"])
        self.steps = 0

    def __call__(self, **batch):
        return self.module(**batch)

    def backward(self, loss):
        loss.backward()

    def step(self):
        params = [p for p in self.module.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, self.config["gradient_clipping"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1


def test_deepspeed_trainer_matches_torch(tiny_tokenizer, docs):
    settings = {**SETTINGS, "engine": "deepspeed", "zero_stage": 2}
    ref, _ = delta_scores(make_model(tiny_tokenizer), docs, SETTINGS, pad_id(tiny_tokenizer))
    model = make_model(tiny_tokenizer)
    torch.manual_seed(0)
    trainer = DeepSpeedTrainer(model, settings, engine=FakeEngine(model, settings))
    before = {n: p.detach().clone() for n, p in region_parameters(model).items()}
    batches = training_batches(docs, 3, 0, pad_id(tiny_tokenizer))
    info = train_steps(trainer, batches, SETTINGS["steps"])
    assert trainer.engine.steps == SETTINGS["steps"] and len(info["losses"]) == 4
    for name, p in region_parameters(model).items():
        assert torch.equal((p.detach() - before[name]).abs(), ref[name]), name


def test_deepspeed_config_and_missing_package(tiny_tokenizer):
    cfg = deepspeed_config({"batch_size": 8, "lr": 1e-5, "zero_stage": 1}, "bfloat16")
    assert cfg["zero_optimization"] == {"stage": 1}
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and cfg["bf16"] == {"enabled": True}
    assert cfg["optimizer"] == {"type": "AdamW", "params": {"lr": 1e-5, "weight_decay": 0.0}}
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="deepspeed package is not installed"):
            make_trainer(make_model(tiny_tokenizer), {**SETTINGS, "engine": "deepspeed"})
    else:
        print("deepspeed is installed: the missing-package message is not exercised")

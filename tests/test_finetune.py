"""The fine-tuning restrictions and experiments on tiny models: a neuron-masked step
changes exactly the selected rows/columns (checked against masks built directly from the
architectures' weight layouts), LoRA trains only adapters and merges back, a resumed run
after SIGKILL equals an uninterrupted one, bad inputs fail before training, and the
summary's paired bootstrap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, make_model

from workflow_scripts.models.padding import pad_id
from workflow_scripts.training.claims import finetune_claims
from workflow_scripts.training.experiments import finetune_table, training_steps
from workflow_scripts.training.loop import continued_pretraining, training_documents
from workflow_scripts.training.restrictions import (
    AllParameters,
    FrozenRegion,
    LoRA,
    NeuronMask,
    projection_names,
)
from workflow_scripts.training.summary import collect, summarize

SETTINGS = {"steps": 3, "batch_size": 3, "lr": 0.01, "weight_decay": 0.1, "seed": 0}
UNITS = [(0, "mlp", 3), (1, "mlp", 7), (0, "q", 5), (1, "k", 2), (0, "v", 1), (1, "o", 9)]


@pytest.fixture
def docs(tiny_tokenizer, sentences):
    return training_documents(tiny_tokenizer, sentences["fr"][:9] + sentences["zh"][:9], 64)


def _mark(masks, params, name, where):
    masks.setdefault(name, torch.zeros_like(params[name], dtype=torch.bool))[where] = True


def direct_masks(model, arch: str, units) -> dict[str, torch.Tensor]:
    """The elements each unit owns, from the architecture's own weight names and layouts
    (nn.Linear ``[out, in]``; GPT-2's Conv1D ``[in, out]``; fused projections)."""
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    cfg = model.config
    for layer, module, i in units:
        if arch == "gpt2":  # Conv1D [in, out]; FFN neurons only (fused c_attn)
            pre = f"transformer.h.{layer}.mlp"
            _mark(masks, params, f"{pre}.c_fc.weight", (slice(None), i))
            _mark(masks, params, f"{pre}.c_fc.bias", (i,))
            _mark(masks, params, f"{pre}.c_proj.weight", (i,))
            continue
        if arch == "bloom":  # biases everywhere; qkv interleaved per head [q_h; k_h; v_h]
            pre = f"transformer.h.{layer}"
            if module == "mlp":
                for n, where in (("dense_h_to_4h", (i,)), ("dense_4h_to_h", (slice(None), i))):
                    _mark(masks, params, f"{pre}.mlp.{n}.weight", where)
                _mark(masks, params, f"{pre}.mlp.dense_h_to_4h.bias", (i,))
            elif module == "o":
                _mark(masks, params, f"{pre}.self_attention.dense.weight", (slice(None), i))
            else:
                d = cfg.hidden_size // cfg.n_head
                c = (i // d) * 3 * d + "qkv".index(module) * d + i % d
                _mark(masks, params, f"{pre}.self_attention.query_key_value.weight", (c,))
                _mark(masks, params, f"{pre}.self_attention.query_key_value.bias", (c,))
            continue
        pre = f"model.layers.{layer}"
        if module == "mlp":
            if arch == "phi3":
                size = cfg.intermediate_size
                _mark(masks, params, f"{pre}.mlp.gate_up_proj.weight", (i,))
                _mark(masks, params, f"{pre}.mlp.gate_up_proj.weight", (size + i,))
            else:
                _mark(masks, params, f"{pre}.mlp.gate_proj.weight", (i,))
                _mark(masks, params, f"{pre}.mlp.up_proj.weight", (i,))
            _mark(masks, params, f"{pre}.mlp.down_proj.weight", (slice(None), i))
        elif module == "o":
            _mark(masks, params, f"{pre}.self_attn.o_proj.weight", (slice(None), i))
        elif arch == "phi3":
            head = cfg.hidden_size // cfg.num_attention_heads
            nq, nk = cfg.num_attention_heads * head, cfg.num_key_value_heads * head
            c = {"q": 0, "k": nq, "v": nq + nk}[module] + i
            _mark(masks, params, f"{pre}.self_attn.qkv_proj.weight", (c,))
        else:
            _mark(masks, params, f"{pre}.self_attn.{module}_proj.weight", (i,))
            if f"{pre}.self_attn.{module}_proj.bias" in params:
                _mark(masks, params, f"{pre}.self_attn.{module}_proj.bias", (i,))
    return masks


@pytest.mark.parametrize("arch", ["qwen2_gqa", "gemma3_text", "gpt2", "phi3", "bloom"])
def test_neuron_mask_changes_exactly_the_selected_rows_and_columns(tiny_tokenizer, docs, arch):
    model = make_model(tiny_tokenizer, arch)
    units = [u for u in UNITS if u[1] == "mlp"] if arch == "gpt2" else UNITS
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = NeuronMask(units)
    info = continued_pretraining(model, docs, SETTINGS, pad_id(tiny_tokenizer), None, mask)
    expected = direct_masks(model, arch, units)
    moved = allowed = 0
    for name, p in model.named_parameters():
        changed = p.detach() != before[name]
        own = expected.get(name, torch.zeros_like(changed))
        # bit-identical outside the units, weight decay (0.1 here) included
        assert not (changed & ~own).any(), name
        moved, allowed = moved + int((changed & own).sum()), allowed + int(own.sum())
    assert mask.n_trainable() == allowed and moved > 0.9 * allowed
    assert info["restriction"] == "neurons" and info["n_units"] == len(units)
    # the masks are gone: every parameter trains again, no hook left behind
    assert all(p.requires_grad and not p._backward_hooks for p in model.parameters())


def test_trainable_layers_does_not_widen_a_neuron_mask_or_lora(tiny_tokenizer, docs):
    """``trainable: layers`` chooses what full training trains; a neuron mask and LoRA
    keep to their own elements under it."""
    settings = {**SETTINGS, "trainable": "layers"}
    model = make_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    continued_pretraining(model, docs, settings, pad_id(tiny_tokenizer), None, NeuronMask(UNITS))
    expected = direct_masks(model, "qwen2_gqa", UNITS)
    for name, p in model.named_parameters():
        changed = p.detach() != before[name]
        assert not (changed & ~expected.get(name, torch.zeros_like(changed))).any(), name
    model = make_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = LoRA(2, 4, ["v_proj"])
    continued_pretraining(model, docs, settings, pad_id(tiny_tokenizer), None, lora)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != name.endswith("v_proj.weight"), name
    assert all(p.requires_grad for p in model.parameters())  # flags restored after merging


def test_frozen_region_refuses_zero_stages_with_a_master_copy(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    region = FrozenRegion({"model.layers.0.mlp.down_proj.weight": torch.arange(4)})
    with pytest.raises(ValueError, match="zero_stage: 0"):
        region.check(model, {"engine": "deepspeed", "zero_stage": 2})
    region.check(model, {"engine": "deepspeed", "zero_stage": 0})


def test_frozen_region_is_bit_identical_and_the_rest_trains(tiny_tokenizer, docs):
    model = make_model(tiny_tokenizer, "gemma3_text")
    params = dict(model.named_parameters())
    region = {
        "model.layers.0.mlp.down_proj.weight": torch.arange(0, 500, 3),
        "model.layers.1.self_attn.q_norm.weight": torch.tensor([0, 2]),
    }
    before = {n: p.detach().clone() for n, p in params.items()}
    restriction = FrozenRegion(region)
    info = continued_pretraining(model, docs, SETTINGS, pad_id(tiny_tokenizer), None, restriction)
    for name, idx in region.items():
        assert torch.equal(params[name].detach().view(-1)[idx], before[name].view(-1)[idx])
    moved = (
        params["model.layers.0.mlp.down_proj.weight"].detach()
        != before["model.layers.0.mlp.down_proj.weight"]
    )
    assert moved.sum() > 0.5 * (moved.numel() - len(region["model.layers.0.mlp.down_proj.weight"]))
    assert info["frozen_elements"] == 167 + 2


def test_lora_trains_only_adapters_and_merges_back_to_the_base_shape(tiny_tokenizer, docs):
    model = make_model(tiny_tokenizer, "qwen2_gqa")
    kind, keys = type(model), set(model.state_dict())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = LoRA(r=2, alpha=4, target_modules=["q_proj", "down_proj"])
    wrapped = lora.prepare(model)
    trained = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    lora.finish(wrapped)
    model = make_model(tiny_tokenizer, "qwen2_gqa")
    settings = {**SETTINGS, "weight_decay": 0.0}
    info = continued_pretraining(model, docs, settings, pad_id(tiny_tokenizer), None, lora)
    assert type(model) is kind and set(model.state_dict()) == keys
    # rank 2: q_proj 32 -> 32 and down_proj 64 -> 32, two layers
    assert info["lora_parameters"] == 2 * (2 * (32 + 32) + 2 * (64 + 32))
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name.endswith(("q_proj.weight", "down_proj.weight"))), name


def test_lora_targets_default_to_the_neurons_projections(tiny_tokenizer):
    qwen, phi3, gpt2 = (make_model(tiny_tokenizer, a) for a in ("qwen2", "phi3", "gpt2"))
    assert projection_names(qwen) == [
        "gate_proj",
        "up_proj",
        "down_proj",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]
    assert projection_names(qwen, ["ffn", "v"]) == ["gate_proj", "up_proj", "down_proj", "v_proj"]
    assert projection_names(phi3) == ["gate_up_proj", "down_proj", "qkv_proj", "o_proj"]
    assert projection_names(gpt2, ["ffn"]) == ["c_fc", "c_proj"]


def test_bad_inputs_fail_before_training(tiny_tokenizer, docs):
    model = make_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="neuron set is empty"):
        NeuronMask([])
    other = {"transformer.h.0.mlp.c_fc.weight": torch.tensor([1, 2])}  # a GPT-2 region
    bad = [
        (LoRA(2, 4, ["q_proj", "c_attn"]), r"no linear layer named \['c_attn'\]"),
        (FrozenRegion(other), "parameters not in the model"),
        (NeuronMask([(0, "mlp", 9999)]), "has 64 units"),
    ]
    for restriction, message in bad:
        with pytest.raises(ValueError, match=message):
            # nothing is measured or trained: the texts would fail if they were read
            finetune_table(model, tiny_tokenizer, docs, restriction, {"en": None}, SETTINGS)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_epochs_become_whole_steps():
    assert training_steps({"epochs": 1, "batch_size": 4}, 64) == 16
    assert training_steps({"epochs": 1, "batch_size": 4, "grad_accum": 3}, 64) == 6
    assert training_steps({"epochs": 0.5, "batch_size": 4}, 10) == 2
    assert training_steps({"steps": 7, "batch_size": 4}, 10) == 7


def test_gradient_accumulation_equals_the_big_batch(tiny_tokenizer, docs):
    """Two micro-batches of 3 accumulate the gradient of one batch of 6 (equal lengths),
    so the trained weights agree to float rounding."""
    same = [d for d in docs if len(d) == len(docs[0])] or docs[:1]
    equal = [same[i % len(same)] for i in range(24)]
    runs = []
    for batch, accum in ((6, 1), (3, 2)):
        model = make_model(tiny_tokenizer)
        s = {**SETTINGS, "batch_size": batch, "grad_accum": accum, "weight_decay": 0.0}
        continued_pretraining(model, equal, s, pad_id(tiny_tokenizer))
        runs.append(torch.cat([p.detach().view(-1) for p in model.parameters()]))
    assert torch.allclose(runs[0], runs[1], rtol=1e-4, atol=1e-6)


RESUME = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from transformers import AutoModelForCausalLM
    from workflow_scripts.training.checkpoints import TrainingCheckpoint
    from workflow_scripts.training.loop import continued_pretraining
    from workflow_scripts.training.restrictions import LoRA, NeuronMask

    work, kind, ckpt, out = sys.argv[1:5]
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(work + "/model")
    docs = json.load(open(work + "/docs.json"))
    kill_at = int(os.environ.get("KILL_AT", "0"))
    base = NeuronMask if kind == "neurons" else LoRA

    class Killed(base):
        step = 0
        def after_step(self):
            super().after_step()
            Killed.step += 1
            if Killed.step == kill_at:  # after its checkpoint was saved, mid-run
                os.kill(os.getpid(), signal.SIGKILL)

    args = [[(0, "mlp", 3), (1, "q", 5), (1, "o", 2)]] if kind == "neurons" else [2, 4, ["v_proj"]]
    restriction = Killed(*args)
    settings = {"steps": 6, "batch_size": 2, "lr": 0.01, "seed": 0}
    checkpoint = TrainingCheckpoint(ckpt, {"kind": kind}, 1) if ckpt != "-" else None
    continued_pretraining(model, docs, settings, 0, checkpoint, restriction)
    torch.save(model.state_dict(), out)
    """
)


@pytest.mark.parametrize("kind", ["neurons", "lora"])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_tokenizer, docs, tmp_path, kind):
    make_model(tiny_tokenizer).save_pretrained(tmp_path / "model")
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(ckpt: str, out: str, kill_at: int = 0) -> int:
        cmd = [sys.executable, str(script), str(tmp_path), kind, ckpt, out]
        proc = subprocess.run(cmd, env={**env, "KILL_AT": str(kill_at)}, capture_output=True)
        assert proc.returncode in (0, -9), proc.stderr.decode()[-2000:]
        return proc.returncode

    assert run("-", str(tmp_path / "whole.pt")) == 0
    ckpt = str(tmp_path / "ckpt")
    assert run(ckpt, str(tmp_path / "never.pt"), kill_at=3) == -9
    assert not (tmp_path / "never.pt").exists()
    assert run(ckpt, str(tmp_path / "resumed.pt")) == 0
    whole, resumed = (
        torch.load(tmp_path / f, weights_only=True) for f in ("whole.pt", "resumed.pt")
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole), kind


def _job(tmp_path, experiment, lang, variant, shift):
    """A synthetic job table: every document's NLL lowered by ``shift[eval_lang]``."""
    from workflow_scripts.io import write_parquet
    from workflow_scripts.training.experiments import SCHEMA

    rng = np.random.default_rng(0)
    rows = []
    for eval_lang in ("en", "fr", "zh"):
        nll, tokens = rng.uniform(20, 40, 30), rng.integers(10, 20, 30).astype(float)
        for phase, values in (("before", nll), ("after", nll - shift[eval_lang] * tokens)):
            ppl = float(np.exp(values.sum() / tokens.sum()))
            rows.append(
                dict(
                    eval_lang=eval_lang,
                    measure="ppl",
                    phase=phase,
                    value=ppl,
                    n=int(tokens.sum()),
                    item_values=list(values),
                    item_weights=list(tokens),
                )
            )
    import pyarrow as pa

    path = tmp_path / f"{experiment}_{lang}_{variant}.parquet"
    meta = {
        "experiment": experiment,
        "lang": lang,
        "variant": variant,
        "steps": 4,
        "n_changed": 10,
        "restriction": variant,
    }
    write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), path, metadata=meta)
    return path


def test_summary_and_claims_follow_the_measured_changes(tmp_path):
    jobs = [
        _job(tmp_path, "enhance", "fr", "neurons", {"en": 0.0, "fr": 0.2, "zh": 0.0}),
        _job(tmp_path, "enhance", "fr", "random", {"en": 0.0, "fr": 0.01, "zh": 0.0}),
        _job(tmp_path, "forget", "fr", "core", {"en": -0.01, "fr": 0.2, "zh": -0.01}),
        _job(tmp_path, "forget", "fr", "random", {"en": -0.2, "fr": 0.2, "zh": -0.2}),
        _job(tmp_path, "forget", "fr", "none", {"en": -0.3, "fr": 0.25, "zh": -0.3}),
    ]
    df = collect(jobs)
    summary = summarize(df)
    row = summary[(summary.variant == "neurons") & (summary.eval_lang == "fr")].iloc[0]
    assert row.change == pytest.approx(np.expm1(-0.2)) and row.ci_low <= row.change <= row.ci_high
    others = summary[(summary.variant == "random") & (summary.experiment == "forget")]
    others = others[others.eval_lang == "others"].iloc[0]
    assert others.change == pytest.approx(np.expm1(0.2))
    claims = pd.DataFrame(finetune_claims(df)).set_index("claim_id")
    # P, Q, S, T hold by construction; R (a task) is not computed without task rows
    assert claims.loc[["P", "Q", "S", "T"], "holds"].tolist() == [True] * 4
    assert claims.loc["R", "holds"] is None and "not computed" in claims.loc["R", "detail"]
    flipped = collect(
        [*jobs[:1], _job(tmp_path, "enhance", "fr", "random", {"en": 0, "fr": 0.4, "zh": 0})]
    )
    assert not pd.DataFrame(finetune_claims(flipped)).set_index("claim_id").loc["P", "holds"]


def test_all_parameters_is_the_plain_loop(tiny_tokenizer, docs):
    a, b = make_model(tiny_tokenizer), make_model(tiny_tokenizer)
    continued_pretraining(a, docs, SETTINGS, pad_id(tiny_tokenizer))
    continued_pretraining(b, docs, SETTINGS, pad_id(tiny_tokenizer), None, AllParameters())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_finetune_table_compares_with_the_base_rows(tiny_tokenizer, docs, sentences):
    """Before rows measured by the base job are the model's own before-measurement; rows of
    other languages are refused."""
    from workflow_scripts.training.experiments import measure

    texts = {"fr": sentences["fr"][40:46], "zh": sentences["zh"][40:46]}
    s = {**SETTINGS, "eval_max_length": 32, "eval_batch_size": 4, "eval_max_tokens": None}
    model = make_model(tiny_tokenizer)
    base = measure(model, tiny_tokenizer, texts, s, "before")
    table, meta = finetune_table(
        model, tiny_tokenizer, docs, NeuronMask(UNITS), texts, s, before=base
    )
    rows = table.to_pylist()
    assert [r for r in rows if r["phase"] == "before"] == base
    after = {r["eval_lang"]: r["value"] for r in rows if r["phase"] == "after"}
    assert set(after) == {"fr", "zh"} and meta["n_changed"] > 0 and meta["steps"] == 3
    with pytest.raises(ValueError, match="other languages or measures"):
        finetune_table(
            make_model(tiny_tokenizer),
            tiny_tokenizer,
            docs,
            AllParameters(),
            texts,
            s,
            before=base[:1],
        )


def test_one_loop_serves_every_fine_tune():
    """Only training/loop.py steps an optimizer or calls backward for training (grad x
    param's backward takes no step); the old freeze loop is gone."""
    import re

    package = REPO / "workflow_scripts"
    offenders = []
    for path in package.rglob("*.py"):
        text = path.read_text()
        code = "\n".join(line.split("#")[0] for line in text.splitlines())
        hits = re.findall(r"\.backward\(|\.step\(\)|optim\.AdamW|optim\.SGD", code)
        rel = path.relative_to(package).as_posix()
        if hits and rel not in {"training/loop.py", "regions/scores.py"}:
            offenders.append((rel, hits))
    assert offenders == []
    scores = (package / "regions" / "scores.py").read_text()
    grad_x_param = scores.split("def grad_x_param_scores", 1)[1].split("\ndef ", 1)[0]
    assert ".step(" not in grad_x_param and "optim." not in grad_x_param
    assert not (package / "regions" / "freeze.py").exists()

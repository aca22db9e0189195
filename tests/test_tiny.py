"""Tiny-model building and pretraining."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHS
from transformers import AutoModelForCausalLM, AutoTokenizer

from workflow_scripts.models.anatomy import mlp_sites
from workflow_scripts.models.tiny import build_config, language_blocks, pretrain
from workflow_scripts.training.checkpoints import TrainingCheckpoint

SPEC = {
    "architecture": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "vocab_size": 300,
    "seq_len": 32,
    "batch_size": 4,
    "steps": 5,
    "lr": 0.003,
    "seed": 0,
}


@pytest.fixture
def two_language_corpora(corpus_writer, sentences):
    return {
        lang: str(corpus_writer(lang, [{"text": t, "split": "train"} for t in sentences[lang]] * 2))
        for lang in ("en", "zh")
    }


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("layers", "hidden"), [(2, 32), (3, 16)])
def test_build_config(tiny_tokenizer, arch, layers, hidden):
    spec = {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 48,
        "seq_len": 64,
    }
    config = build_config(arch, tiny_tokenizer, spec)
    assert config.model_type == arch
    assert config.num_hidden_layers == layers
    assert config.hidden_size == hidden
    assert config.num_attention_heads == 4
    assert config.vocab_size == len(tiny_tokenizer)
    assert config.eos_token_id == tiny_tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    sites = mlp_sites(model)
    assert len(sites) == layers
    assert all(s.size == (4 * hidden if arch == "bloom" else 48) for s in sites)
    if arch not in ("gpt2", "bloom"):
        assert config.num_key_value_heads == 2


def test_build_config_unknown_architecture(tiny_tokenizer):
    spec = {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 8,
        "seq_len": 8,
    }
    with pytest.raises(ValueError, match="unknown architecture 'notamodel'"):
        build_config("notamodel", tiny_tokenizer, spec)


def test_language_blocks(tiny_tokenizer):
    blocks = language_blocks(
        tiny_tokenizer, {"en": ["the cat runs " * 40], "fr": ["le chat " * 10]}, 16
    )
    assert all(b.shape == (16,) for b in blocks)
    n_fr = len(language_blocks(tiny_tokenizer, {"fr": ["le chat " * 10]}, 16))
    assert n_fr >= 1
    # round robin: the first 2 * n_fr blocks alternate en, fr
    en_first = language_blocks(tiny_tokenizer, {"en": ["the cat runs " * 40]}, 16)
    assert torch.equal(blocks[0], en_first[0])
    assert torch.equal(blocks[2], en_first[1])
    with pytest.raises(ValueError, match="'fr' training text is shorter than one block"):
        language_blocks(tiny_tokenizer, {"en": ["the cat " * 40], "fr": ["le"]}, 16)


def test_pretrain_writes_loadable_directory(tmp_path, two_language_corpora):
    out = tmp_path / "model"
    info = pretrain(two_language_corpora, SPEC, out)
    assert (out / "training.json").exists()
    saved = json.loads((out / "training.json").read_text())
    assert saved["languages"] == ["en", "zh"]
    assert len(saved["losses"]) == SPEC["steps"]
    assert saved["tokens_seen"] == 5 * 4 * 32
    assert saved["spec"]["architecture"] == "qwen2"
    assert info["loss_last"] == saved["losses"][-1]
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert len(tok) <= 300 and model.config.vocab_size == len(tok)
    assert tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    ids = tok("hello 猫", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()
    assert not list(tmp_path.glob(".model.tmp-*")), "no temporary directory left"


def test_pretrain_is_seeded(tmp_path, two_language_corpora):
    pretrain(two_language_corpora, SPEC, tmp_path / "a")
    pretrain(two_language_corpora, SPEC, tmp_path / "b")
    pretrain(two_language_corpora, {**SPEC, "seed": 1}, tmp_path / "c")
    a, b, c = (
        AutoModelForCausalLM.from_pretrained(tmp_path / x).state_dict() for x in ("a", "b", "c")
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    ja = json.loads((tmp_path / "a" / "training.json").read_text())
    jb = json.loads((tmp_path / "b" / "training.json").read_text())
    assert ja["losses"] == jb["losses"]
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_text()


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_pretrain_loss_decreases(tmp_path, two_language_corpora, arch):
    info = pretrain(two_language_corpora, {**SPEC, "architecture": arch, "steps": 30}, tmp_path)
    losses = info["losses"]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, losses


def test_pretrain_replaces_existing_output(tmp_path, two_language_corpora):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    pretrain(two_language_corpora, SPEC, out)
    assert not (out / "stale.txt").exists()
    assert (out / "config.json").exists()


def test_pretrain_resumes_from_checkpoint(tmp_path, two_language_corpora, monkeypatch):
    """A crash after step 5 resumes from the step-4 checkpoint and ends bit-identical."""
    spec = {**SPEC, "steps": 6, "checkpoint_every": 2}
    pretrain(two_language_corpora, spec, tmp_path / "ref")
    ckpt = tmp_path / "ckpt"
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(two_language_corpora, spec, tmp_path / "out", ckpt)
    assert not (tmp_path / "out").exists()
    assert (ckpt / "state.pt").exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    info = pretrain(two_language_corpora, spec, tmp_path / "out", ckpt)
    assert info["resumed_at_step"] == 4
    assert len(info["losses"]) == 6
    assert not ckpt.exists()  # cleared once the output is written
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "ref").state_dict()
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert all(torch.equal(ref[k], out[k]) for k in ref)


def test_checkpoint_of_other_settings_is_ignored(tmp_path, two_language_corpora):
    ckpt = tmp_path / "ckpt"
    spec = {**SPEC, "steps": 4, "checkpoint_every": 2}
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    TrainingCheckpoint(ckpt, {"spec": {**spec, "lr": 0.5}}, 2).save(2, model, opt)
    assert TrainingCheckpoint(ckpt, {"spec": spec}, 2).restore(model, opt) == (0, {})
    assert TrainingCheckpoint(ckpt, {"spec": {**spec, "lr": 0.5}}, 2).restore(model, opt)[0] == 2

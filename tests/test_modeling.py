"""Model loading through the stock Auto classes (offline), path checks, GGUF sources."""

from __future__ import annotations

import re

import pytest
import torch

from workflow_scripts.models.loading import (
    check_model_path,
    load_model,
    looks_local,
    resolve_gguf,
)


@pytest.fixture
def saved_model(tmp_path, tiny_model, tiny_tokenizer):
    """A tiny random llama saved with save_pretrained (weights + tokenizer)."""
    model = tiny_model("llama")
    out = tmp_path / "saved"
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out, model


def test_load_model_from_local_directory(saved_model, tiny_tokenizer):
    path, original = saved_model
    model, tok = load_model(str(path), threads=1)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tok.get_vocab() == tiny_tokenizer.get_vocab()
    ids = tok(["le chat voit la ville."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    model_bf16, _ = load_model(path, dtype="bfloat16")  # a Path works too
    assert next(model_bf16.parameters()).dtype == torch.bfloat16


def test_load_model_relative_directory(saved_model, monkeypatch):
    path, _ = saved_model
    monkeypatch.chdir(path.parent)
    model, _ = load_model("saved")  # no slash: a hub id unless it exists locally
    assert type(model).__name__ == "LlamaForCausalLM"
    model, _ = load_model("./saved")
    assert type(model).__name__ == "LlamaForCausalLM"


def test_load_model_home_relative_path(saved_model, monkeypatch):
    path, _ = saved_model
    monkeypatch.setenv("HOME", str(path.parent))
    check_model_path("~/saved")  # accepted
    model, _ = load_model("~/saved")
    assert type(model).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize(
    "missing",
    ["/definitely/not/here/model", "./not-here", "../not-here", "~/not-here-xyz", "a/b/c"],
)
def test_missing_local_path(missing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(repr(missing))):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_path(missing)


def test_local_file_is_not_a_model_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        check_model_path(str(f))


def test_hub_id_offline_not_cached():
    # a hub id is not checked locally; offline and uncached it fails with its name
    check_model_path("no-such-org-xyz/no-such-model")
    with pytest.raises(OSError, match="could not load model 'no-such-org-xyz/no-such-model'"):
        load_model("no-such-org-xyz/no-such-model")


def test_empty_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises((OSError, ValueError), match=re.escape(str(tmp_path / "empty"))):
        load_model(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ("/abs/model", True),
        ("./model", True),
        ("../model", True),
        ("~/model", True),
        ("results/models/qwen", True),
        ("Qwen/Qwen2.5-7B", False),
        ("google/gemma-3-270m", False),
        ("gpt2", False),
        ("existing_dir", True),
        ("existing_dir/sub", True),
        ("missing_org/sub", False),
    ],
)
def test_looks_local(path, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_dir" / "sub").mkdir(parents=True)
    assert looks_local(path) is local


def test_resolve_gguf_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown GGUF package 'nope'"):
        resolve_gguf("pip:nope", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.gguf"):
        resolve_gguf(str(tmp_path / "missing.gguf"), tmp_path)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_gguf(str(f), tmp_path) == f

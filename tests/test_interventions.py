"""Interventions beyond zeroing (workflow_scripts.evaluation.interventions) and the
statistics they use (workflow_scripts.evaluation.unit_stats), against direct computations
on tiny models of every architecture, in float64.

The hooked tensor of each unit family (down_proj's input, o_proj's input, the q/k/v
projection's output) is captured by an observer hook registered *after* the intervention's
own hook, so it sees the edited tensor; the same capture without intervention is the
reference: the edited channels must hold exactly the stated values and every other
channel must be bit-identical.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from conftest import MODEL_IDS, forward_with_hooks

from workflow_scripts.evaluation.interventions import (
    Intervention,
    deactivated,
    dense_only,
    intervened,
    steered,
    validate_units,
)
from workflow_scripts.evaluation.unit_stats import (
    STATS_COLUMNS,
    diffmean_directions,
    mean_hidden,
    unit_statistics,
    unit_values,
)
from workflow_scripts.io import write_parquet
from workflow_scripts.models.anatomy import attention_sites, decoder_layers, ffn_sites

LAYER = 1  # the last of the tiny models' two layers
# made-up per-unit values, none of them exact in float32 (a float64 model must get them exactly)
VALUES = (0.3, -1.7, 2.9)
SET_FACTOR = 2.5


def attn_modules(model) -> list[str]:
    """q/k/v/o, except on GPT-2, whose Conv1D c_attn has no per-channel sites (documented)."""
    if model.config.model_type == "gpt2":
        with pytest.raises(NotImplementedError):
            attention_sites(model)
        return []
    return ["q", "k", "v", "o"]


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, state) -> bool:
    after = model.state_dict()
    return after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


def batch(tokenizer, sentences):
    """Two texts of different lengths, right-padded."""
    texts = [sentences["en"][0], sentences["fr"][1] + " " + sentences["fr"][2]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
    assert not enc["attention_mask"].bool().all()  # there is padding
    return enc


def hook_point(model, module: str, layer: int = LAYER):
    """(hooked module, "pre" or "out", channel of each unit index): where ``module``'s
    units of ``layer`` live, found with the anatomy helpers."""
    if module == "mlp":
        site = ffn_sites(model)[layer]
        return site.down, "pre", torch.arange(site.size)
    site = attention_sites(model)[layer]
    if module == "o":
        return site.o, "pre", torch.arange(site.size("o"))
    hooked, channels = site.projection(module)
    return hooked, "out", channels


def capture(model, enc, module: str, context=None) -> torch.Tensor:
    """The hooked tensor of ``module`` at LAYER during one forward; the observer hook is
    registered after entering ``context``, so it runs after the intervention's hooks."""
    target, kind, _ = hook_point(model, module)
    seen = []
    with context if context is not None else contextlib.nullcontext():
        if kind == "pre":
            h = target.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
        else:
            h = target.register_forward_hook(lambda _m, _a, out: seen.append(out.clone()))
        forward_with_hooks(model, enc, [h])
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("arch", MODEL_IDS)
def test_each_intervention_changes_exactly_its_channels(
    arch, tiny_model, tiny_tokenizer, sentences
):
    model = tiny_model(arch).double()
    enc = batch(tiny_tokenizer, sentences)
    state = state_of(model)
    picked = [0, 3, 5]
    value = torch.tensor(VALUES, dtype=torch.float64)
    for module in ["mlp", *attn_modules(model)]:
        _, _, channels = hook_point(model, module)
        units = [(LAYER, module, i) for i in picked]
        values = dict(zip(units, VALUES, strict=True))
        ref = capture(model, enc, module)
        cols = channels[picked]
        others = torch.ones(ref.shape[-1], dtype=torch.bool)
        others[cols] = False
        x = ref[..., cols]
        cases = {
            "zero": (Intervention("zero"), torch.zeros_like(x)),
            "scale 2.5": (Intervention("scale", 2.5), 2.5 * x),
            "scale 0": (Intervention("scale", 0), torch.zeros_like(x)),
            "scale 0.0": (Intervention("scale", 0.0), torch.zeros_like(x)),
            "mean": (Intervention("mean"), value.expand_as(x)),
            "set mean": (Intervention("set", SET_FACTOR), (SET_FACTOR * value).expand_as(x)),
            "set positive_mean": (
                Intervention("set", SET_FACTOR, "positive_mean"),
                (SET_FACTOR * value).expand_as(x),
            ),
        }
        for name, (iv, want) in cases.items():
            got = capture(model, enc, module, intervened(model, units, iv, values))
            assert got.shape == ref.shape, (arch, module, name)
            assert torch.equal(got[..., cols], want), (arch, module, name)
            assert torch.equal(got[..., others], ref[..., others]), (arch, module, name)
            assert hook_count(model) == 0 and same_state(model, state), (arch, module, name)
        # deactivated is intervened with zero
        got = capture(model, enc, module, deactivated(model, units))
        assert torch.equal(got[..., cols], torch.zeros_like(x))
        assert torch.equal(got[..., others], ref[..., others])
    assert same_state(model, state), arch
    assert hook_count(model) == 0


@pytest.mark.parametrize("arch", MODEL_IDS)
def test_model_is_restored_after_an_exception(arch, tiny_model, tiny_tokenizer, sentences):
    model = tiny_model(arch).double()
    enc = batch(tiny_tokenizer, sentences)
    state = state_of(model)
    with torch.no_grad():
        before = model(**enc).logits
    units = [(0, "mlp", 1), (1, "mlp", 4)]
    units += [(la, m, 2 + la) for la in (0, 1) for m in attn_modules(model)]
    values = dict.fromkeys(units, 1.5)
    contexts = {
        "set": lambda: intervened(model, units, Intervention("set", 2.0), values),
        "mean": lambda: intervened(model, units, Intervention("mean"), values),
        "scale": lambda: intervened(model, units, Intervention("scale", 4.0)),
        "zero hooks": lambda: intervened(model, units, "zero"),
        "zero weights": lambda: intervened(model, units, "zero", mode="weights"),
        "steer": lambda: steered(model, {0: torch.ones(model.config.hidden_size)}, 2.0),
    }
    for name, make in contexts.items():
        with pytest.raises(RuntimeError, match="boom"):
            with make():
                with torch.no_grad():
                    changed = model(**enc).logits
                assert not torch.equal(changed, before), name  # it did act
                raise RuntimeError("boom")
        assert hook_count(model) == 0, name
        assert same_state(model, state), name
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, before)


def test_bad_interventions_fail_before_changing_anything(tiny_model):
    model = tiny_model("qwen2").double()
    state = state_of(model)
    units = [(1, "mlp", 2)]

    def fails(message, make):
        with pytest.raises(ValueError, match=message):
            with make():
                raise AssertionError("the context must not be entered")
        assert hook_count(model) == 0 and same_state(model, state), message

    with pytest.raises(ValueError, match=r"intervention must be one of .*'double'"):
        Intervention("double")
    fails(r"intervention must be one of .*'double'", lambda: intervened(model, units, "double"))
    for bad in ("2", True, False, None, [2.0]):
        with pytest.raises(ValueError, match="intervention scale: factor must be a number"):
            Intervention("scale", bad)
    with pytest.raises(ValueError, match="statistic must be one of"):
        Intervention("set", 1.0, "median")
    fails(
        "intervention mean needs per-unit values",
        lambda: intervened(model, units, Intervention("mean")),
    )
    fails("intervention set needs per-unit values", lambda: intervened(model, units, "set"))
    fails(
        "intervention set: no statistic for layer 1 mlp units \\[2\\]",
        lambda: intervened(model, units, Intervention("set"), {(0, "mlp", 2): 1.0}),
    )
    fails(
        "intervention scale: only zero can edit weights",
        lambda: intervened(model, units, Intervention("scale", 2.0), mode="weights"),
    )
    fails(
        "intervention mean: only zero can edit weights",
        lambda: intervened(model, units, Intervention("mean"), {units[0]: 1.0}, mode="weights"),
    )
    fails("mode must be one of", lambda: intervened(model, units, mode="bias"))
    fails(
        "layer 1 mlp has 64 units, not \\[999\\]",
        lambda: intervened(model, [(1, "mlp", 999)], Intervention("scale", 2.0)),
    )
    fails("layer 0 q has 32 units, not \\[-1\\]", lambda: intervened(model, [(0, "q", -1)]))
    fails("layer 2 out of range", lambda: intervened(model, [(2, "o", 0)], "zero"))
    fails("unknown module 'up'", lambda: intervened(model, [(0, "up", 0)], "zero"))
    # a valid unit beside an invalid one: the weights are not touched before the error
    fails(
        "not \\[64\\]",
        lambda: intervened(model, [(0, "mlp", 0), (1, "mlp", 64)], "zero", mode="weights"),
    )
    fails("does not act on units", lambda: intervened(model, units, Intervention("steer")))
    with pytest.raises(ValueError, match="layer 5 out of range"):
        validate_units(model, [(5, "mlp", 0)])
    validate_units(model, [(0, "mlp", 63), (1, "v", 31)])
    for layer in (2, -1):
        fails(
            f"steer: layers \\[{layer}\\] out of range",
            lambda layer=layer: steered(model, {layer: torch.zeros(32)}, 1.0),
        )


def test_expert_units_only_zero(tiny_model):
    model = tiny_model("mixtral").double()
    state = state_of(model)
    for iv, values in ((Intervention("scale", 2.0), None), (Intervention("mean"), {})):
        with pytest.raises(ValueError, match="dense units"):
            with intervened(model, [(0, "mlp.e1", 3)], iv, values):
                pass
    assert hook_count(model) == 0 and same_state(model, state)
    assert dense_only([(0, "mlp.e1", 3), (1, "q", 2), (0, "expert", 1)], "test") == [(1, "q", 2)]


def layer_outputs(model, enc, context=None) -> list[torch.Tensor]:
    """Every decoder layer's output (whole batch) during one forward, the observer hooks
    registered after entering ``context`` (after the steering hooks)."""
    layers = decoder_layers(model)
    seen: dict[int, torch.Tensor] = {}

    def keep(i):
        def hook(_m, _a, out):
            seen[i] = (out[0] if isinstance(out, tuple) else out).clone()

        return hook

    with context if context is not None else contextlib.nullcontext():
        hooks = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
        forward_with_hooks(model, enc, hooks)
    return [seen[i] for i in range(len(layers))]


@pytest.mark.parametrize("arch", MODEL_IDS)
def test_steer_adds_exactly_the_direction(arch, tiny_model, tiny_tokenizer, sentences):
    model = tiny_model(arch).double()
    enc = batch(tiny_tokenizer, sentences)
    state = state_of(model)
    ref = layer_outputs(model, enc)
    assert len(ref) == 2
    d = torch.linspace(-1, 1, model.config.hidden_size, dtype=torch.float64)
    strength = 0.7
    got = layer_outputs(model, enc, steered(model, {0: d}, strength))
    torch.testing.assert_close(
        got[0] - ref[0], (strength * d).expand_as(ref[0]), rtol=0, atol=1e-12
    )
    assert not torch.allclose(got[1], ref[1])  # the change propagates
    # a later layer only: the layer before it is bit-identical
    got = layer_outputs(model, enc, steered(model, {1: d}, strength))
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(
        got[1] - ref[1], (strength * d).expand_as(ref[1]), rtol=0, atol=1e-12
    )
    # strength 0 changes nothing
    got = layer_outputs(model, enc, steered(model, {0: d, 1: d}, 0.0))
    assert all(torch.equal(g, r) for g, r in zip(got, ref, strict=True))
    assert hook_count(model) == 0 and same_state(model, state)


def test_rows_restrict_every_intervention_to_its_rows(tiny_model, tiny_tokenizer, sentences):
    """Settings side by side in one batch: row 0 edited, row 1 exactly the unmodified run."""
    model = tiny_model("qwen2_gqa").double()
    text = sentences["en"][3]
    enc = tiny_tokenizer([text, text], return_tensors="pt")
    units = [(0, "mlp", 1), (1, "v", 2), (1, "o", 3)]
    values = dict.fromkeys(units, 2.0)
    d = torch.ones(model.config.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        ref = model(**enc).logits
        with intervened(model, units, Intervention("set", 3.0), values, rows=slice(0, 1)):
            with steered(model, {0: d}, 0.5, rows=slice(0, 1)):
                got = model(**enc).logits
        with (
            intervened(model, units, Intervention("set", 3.0), values),
            steered(model, {0: d}, 0.5),
        ):
            full = model(**enc).logits
    assert torch.equal(got[1], ref[1])
    assert torch.allclose(got[0], full[0], rtol=0, atol=1e-10)
    assert not torch.allclose(got[0], ref[0])
    with pytest.raises(ValueError, match="mode must be hooks"):
        with intervened(model, units, "zero", mode="weights", rows=slice(0, 1)):
            pass


# ---------------------------------------------------------------- unit statistics


def keep(seen: dict, key, kind: str, channels=None):
    """An observer hook appending the hooked tensor of one unpadded text (batch row 0)."""

    def pre(_m, args):
        seen.setdefault(key, []).append(args[0][0].clone())

    def out(_m, _a, output):
        x = (output[0] if isinstance(output, tuple) else output)[0]
        seen.setdefault(key, []).append(x if channels is None else x[:, channels])

    return pre if kind == "pre" else out


@pytest.mark.parametrize("arch", ["qwen2_gqa", "gpt2", "phi3", "bloom", "gemma3_text", "gpt_neox"])
def test_unit_statistics_equal_a_direct_computation(arch, tiny_model, tiny_tokenizer, sentences):
    model = tiny_model(arch).double()
    # texts of different lengths (one truncated), batched 3 at a time: padding is masked
    texts = [sentences["fr"][i] + (" " + sentences["fr"][i + 1]) * (i % 4) for i in range(7)]
    lengths = [len(tiny_tokenizer(t, truncation=True, max_length=40)["input_ids"]) for t in texts]
    assert len(set(lengths)) > 2 and max(lengths) == 40
    table, hidden, n_tokens = unit_statistics(
        model, tiny_tokenizer, texts, max_length=40, batch_size=3
    )
    # direct: one text at a time, no padding, every hooked tensor and layer output kept
    seen: dict = {}
    modules = ["mlp", *attn_modules(model)]
    hooks = []
    for layer in range(2):
        for module in modules:
            target, kind, channels = hook_point(model, module, layer)
            fused = None if kind == "pre" else channels
            register = (
                target.register_forward_pre_hook if kind == "pre" else target.register_forward_hook
            )
            hooks.append(register(keep(seen, (layer, module), kind, fused)))
        block = decoder_layers(model)[layer]
        hooks.append(block.register_forward_hook(keep(seen, layer, "out")))
    try:
        with torch.no_grad():
            for t in texts:
                model(**tiny_tokenizer([t], return_tensors="pt", truncation=True, max_length=40))
    finally:
        for h in hooks:
            h.remove()
    assert n_tokens == sum(lengths)
    # float64 throughout, except Bloom, whose attention softmax runs in float32 (and so
    # differs at float32 rounding between a padded batch and one text alone)
    tol = {"rtol": 1e-5, "atol": 1e-8} if arch == "bloom" else {"rtol": 1e-10, "atol": 1e-13}
    df = table.to_pandas()
    assert list(df.columns) == STATS_COLUMNS
    assert set(zip(df["layer"], df["module"], strict=True)) == {
        k for k in seen if isinstance(k, tuple)
    }
    mu_table = hidden.to_pandas().set_index("layer")["mean"]
    assert sorted(mu_table.index) == [0, 1]
    for key, parts in seen.items():
        x = torch.cat(parts).numpy()
        assert x.shape[0] == n_tokens
        if not isinstance(key, tuple):  # a layer's output: mu_l over the valid tokens
            np.testing.assert_allclose(  # stored as float32
                np.asarray(mu_table.loc[key]), x.mean(0), rtol=1e-6, atol=1e-7
            )
            continue
        layer, module = key
        rows = df[(df["layer"] == layer) & (df["module"] == module)].sort_values("index")
        assert rows["index"].tolist() == list(range(x.shape[1]))
        pos = x > 0
        np.testing.assert_allclose(rows["mean"], x.mean(0), **tol)
        np.testing.assert_allclose(rows["std"], x.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(rows["positive_share"], pos.mean(0), rtol=0, atol=1e-15)
        pm = np.where(pos.any(0), (x * pos).sum(0) / np.maximum(pos.sum(0), 1), 0.0)
        np.testing.assert_allclose(rows["positive_mean"], pm, **tol)
    assert hook_count(model) == 0
    # only the requested modules
    mlp_only, _, n = unit_statistics(model, tiny_tokenizer, texts[:2], ["mlp"], max_length=40)
    assert set(mlp_only["module"].to_pylist()) == {"mlp"} and n == sum(lengths[:2])


def stats_file(path, means, positive, share, n_tokens, index=(0, 1)):
    rows = {"layer": [0, 0], "module": ["mlp", "q"], "index": list(index)}
    rows |= {"mean": means, "std": [0.0, 0.0], "positive_mean": positive, "positive_share": share}
    write_parquet(rows, path, None if n_tokens is None else {"n_tokens": n_tokens})
    return path


def test_unit_values_pool_languages_by_tokens(tmp_path):
    a = stats_file(tmp_path / "a.parquet", [1.0, 2.0], [3.0, 4.0], [0.5, 1.0], 100)
    b = stats_file(tmp_path / "b.parquet", [4.0, 0.0], [6.0, 0.0], [0.25, 0.0], 300)
    assert unit_values({"a": a}, "mean") == {(0, "mlp", 0): 1.0, (0, "q", 1): 2.0}
    assert unit_values({"b": b}, "positive_mean") == {(0, "mlp", 0): 6.0, (0, "q", 1): 0.0}
    means = unit_values({"a": a, "b": b}, "mean")  # token-weighted: 100 and 300 tokens
    assert means[(0, "mlp", 0)] == pytest.approx((100 * 1 + 300 * 4) / 400)  # 3.25
    assert means[(0, "q", 1)] == pytest.approx((100 * 2 + 300 * 0) / 400)  # 0.5
    pos = unit_values({"a": a, "b": b}, "positive_mean")
    # weighted by the tokens where the unit is positive: 100 * 0.5 = 50 and 300 * 0.25 = 75
    assert pos[(0, "mlp", 0)] == pytest.approx((50 * 3 + 75 * 6) / 125)  # 4.8
    assert pos[(0, "q", 1)] == pytest.approx(4.0)  # never positive in b: a's value only
    never = stats_file(tmp_path / "n.parquet", [-1.0, -2.0], [0.0, 0.0], [0.0, 0.0], 10)
    assert unit_values({"n": never}, "positive_mean") == {(0, "mlp", 0): 0.0, (0, "q", 1): 0.0}
    other = tmp_path / "c.parquet"
    write_parquet(
        {"layer": [0], "module": ["mlp"], "index": [0], "mean": [1.0], "std": [0.0]}
        | {"positive_mean": [1.0], "positive_share": [1.0]},
        other,
        {"n_tokens": 5},
    )
    with pytest.raises(ValueError, match=r"c\.parquet: its units differ"):
        unit_values({"a": a, "c": other})
    shifted = stats_file(
        tmp_path / "s.parquet", [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], 5, index=(0, 2)
    )
    with pytest.raises(ValueError, match=r"s\.parquet: its units differ"):
        unit_values({"a": a, "s": shifted})
    untold = stats_file(tmp_path / "u.parquet", [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], None)
    with pytest.raises(ValueError, match="without n_tokens"):
        unit_values({"u": untold})
    with pytest.raises(ValueError, match="must be one of"):
        unit_values({"a": a}, "median")
    with pytest.raises(ValueError, match="no statistics table"):
        unit_values({})


def test_diffmean_is_target_minus_source(tmp_path, tiny_model, tiny_tokenizer, sentences):
    src, tgt = tmp_path / "s.parquet", tmp_path / "t.parquet"
    write_parquet({"layer": [0, 1], "mean": [[1.0, 2.0], [0.0, 0.0]]}, src)
    write_parquet({"layer": [0, 1], "mean": [[4.0, 0.0], [1.0, 1.0]]}, tgt)
    d = diffmean_directions(src, tgt)
    assert torch.equal(d[0], torch.tensor([3.0, -2.0])) and torch.equal(d[1], torch.ones(2))
    assert list(diffmean_directions(src, tgt, [1])) == [1]
    with pytest.raises(ValueError, match="layers \\[5\\]"):
        diffmean_directions(src, tgt, [5])
    one = tmp_path / "one.parquet"
    write_parquet({"layer": [0], "mean": [[1.0, 2.0]]}, one)
    with pytest.raises(ValueError, match="different layers"):
        diffmean_directions(src, one)
    # from the hidden tables unit_statistics writes
    model = tiny_model("llama").double()
    for lang, path in (("en", src), ("fr", tgt)):
        _, hidden, _ = unit_statistics(model, tiny_tokenizer, sentences[lang][:4], ["mlp"])
        write_parquet(hidden, path)
    mu_en, mu_fr = mean_hidden(src), mean_hidden(tgt)
    d = diffmean_directions(src, tgt)
    assert sorted(d) == [0, 1] and d[0].shape == (model.config.hidden_size,)
    for la in (0, 1):
        assert torch.equal(d[la], mu_fr[la] - mu_en[la]) and d[la].norm() > 0

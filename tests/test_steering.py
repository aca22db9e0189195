"""Output-language steering: scoring against hand-made texts, generation against direct
computations, the summary's combined score, the batched settings against one setting at a
time, and the config errors raised before any model is loaded."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_config

from workflow_scripts.config import validate_config
from workflow_scripts.evaluation import generation
from workflow_scripts.evaluation.bootstrap import bootstrap_interval
from workflow_scripts.evaluation.cases import COLUMNS as CASE_COLUMNS
from workflow_scripts.evaluation.cases import Case, cases_html, cases_table
from workflow_scripts.evaluation.generation import (
    chrf,
    continuation_nll,
    degenerate,
    greedy_continuations,
    language_of,
)
from workflow_scripts.evaluation.interventions import Intervention, intervened
from workflow_scripts.evaluation.steering import (
    COLUMNS,
    aligned_prompts,
    best_settings,
    neuron_settings,
    random_directions,
    steer_layers,
    steer_settings,
    steering_table,
    summarize,
)
from workflow_scripts.evaluation.unit_stats import (
    diffmean_directions,
    mean_hidden,
    unit_statistics,
    unit_values,
)
from workflow_scripts.io import write_parquet
from workflow_scripts.langid import TokenLanguageClassifier
from workflow_scripts.models.anatomy import lm_head
from workflow_scripts.models.padding import stop_token_ids

LANGS = ["en", "fr", "de", "zh", "ru"]


# ------------------------------------------------------------------------- scoring


def test_chrf_is_sacrebleus_sentence_chrf():
    from sacrebleu.metrics import CHRF

    hyp, ref = "The cat sat on the mat.", "The cat is sitting on the mat."
    assert chrf(hyp, ref) == pytest.approx(CHRF().sentence_score(hyp, [ref]).score)
    assert chrf(ref, ref) == pytest.approx(100.0)
    assert chrf("xyz", "abc") == 0.0
    assert chrf("Le chat dort.", "Le chat dort.") == pytest.approx(100.0)
    known = CHRF().sentence_score("Der Hund läuft schnell.", ["Die Katze läuft schnell."]).score
    assert chrf("Der Hund läuft schnell.", "Die Katze läuft schnell.") == pytest.approx(known)
    assert 0 < chrf(hyp, ref) < 100


def test_degenerate_on_hand_made_ids():
    assert degenerate([1, 2, 3] * 4)  # one 3-gram covers everything
    assert degenerate([5, 6, 7, 1, 2, 3, 1, 2, 3, 1, 2, 3])  # 9 of 12 tokens
    assert not degenerate(list(range(12)))
    assert not degenerate([1, 2, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9])  # 6 of 12: not over half
    assert not degenerate([1, 1])  # shorter than a 3-gram
    assert not degenerate([])
    assert degenerate([4, 4, 4, 4, 4, 4, 1, 2, 3])  # (4, 4, 4) covers 6 of 9
    assert degenerate([1, 2, 1, 2, 1, 2], n=2)
    assert not degenerate([1, 2, 3, 1, 2, 3, 4], share=0.9)  # 6 of 7 = 0.86


def test_language_of_needs_enough_letters():
    clf = TokenLanguageClassifier(LANGS)
    assert language_of(clf, "The cat is sleeping on the kitchen table this morning.") == "en"
    assert language_of(clf, "Le chat est sur la table de la cuisine.") == "fr"
    assert language_of(clf, "Die Katze schläft heute Morgen auf dem Küchentisch.") == "de"
    assert language_of(clf, "Кошка сидит на столе.") == "ru"
    assert language_of(clf, "猫在桌子上。") == "zh"
    assert language_of(clf, "... 12 !") is None
    assert language_of(clf, "oui", min_letters=5) is None  # 3 letters: too short
    assert language_of(clf, "") is None

    class Asked:
        def __init__(self):
            self.texts = []

        def classify(self, text):
            self.texts.append(text)
            return "xx"

    asked = Asked()
    assert language_of(asked, "chat", min_letters=4) == "xx"  # 4 letters: enough
    assert language_of(asked, "ch 1 2 3 4", min_letters=4) is None  # 2 letters: not asked
    assert asked.texts == ["chat"]


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    x = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=float)
    lo, hi = bootstrap_interval(x, seed=3)
    assert (lo, hi) == bootstrap_interval(x, seed=3)
    assert lo <= x.mean() <= hi and 0 <= lo < hi <= 1
    assert bootstrap_interval(np.ones(5)) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    assert all(math.isnan(v) for v in bootstrap_interval([math.nan]))
    y = np.random.default_rng(1).normal(size=50)
    lo, hi = bootstrap_interval(y, seed=7)
    assert lo < y.mean() < hi and (lo, hi) == bootstrap_interval(list(y), seed=7)
    assert bootstrap_interval(y, seed=8) != (lo, hi)  # another seed, other resamples


def frame(rows):
    """A steering table from ``(setting, control, strength, successes, chrfs)``."""
    recs = []
    for setting, control, strength, succ, scores in rows:
        for i, (s, c) in enumerate(zip(succ, scores, strict=True)):
            recs.append(
                {
                    "doc_id": f"d{i}",
                    "setting": setting,
                    "control": control,
                    "strength": strength,
                    "n_units": 4,
                    "lang_success": bool(s),
                    "still_source": not s,
                    "chrf": c,
                    "chrf_source": 1.0,
                    "ppl": 5.0,
                    "degenerate": False,
                }
            )
    return pd.DataFrame(recs)


def test_summary_combined_score_by_hand():
    lape = frame(
        [
            ("none", "none", 0.0, [0, 0], [10, 10]),
            ("both", "selected", 2.0, [1, 1], [20, 10]),  # success 1, relevance 15
            ("both", "random", 2.0, [0, 1], [10, 10]),  # success 0.5, relevance 10
            ("deactivate", "selected", 0.0, [1, 0], [30, 0]),  # success 0.5, relevance 15
            ("deactivate", "random", 0.0, [0, 0], [8, 8]),
        ]
    )
    dm = frame(
        [("none", "none", 0.0, [0, 0], [10, 10]), ("steer", "selected", 1.0, [1, 0], [30, 30])]
    )
    summary = summarize({("lape", "en", "fr"): lape, ("diffmean", "en", "fr"): dm})
    assert len(summary) == 7
    out = summary.set_index(["method", "setting", "control"])
    row = out.loc[("lape", "both", "selected")]
    assert row["success"] == 1.0 and row["relevance"] == 15.0 and row["relevance_none"] == 10.0
    assert row["n"] == 2 and row["n_units"] == 4 and row["ppl"] == 5.0
    assert row["still_source"] == 0.0 and row["degenerate"] == 0.0
    assert row["success_lo"] <= row["success"] <= row["success_hi"]
    best = 30.0  # the best relevance of any setting of the pair (DiffMean's)

    def harmonic(success, relevance):
        r = relevance / best
        return 2 * success * r / (success + r) if success + r else 0.0

    assert row["combined"] == pytest.approx(harmonic(1.0, 15.0))  # 2/3
    for method, setting, control, success, relevance in [
        ("lape", "both", "random", 0.5, 10.0),
        ("lape", "deactivate", "selected", 0.5, 15.0),
        ("lape", "deactivate", "random", 0.0, 8.0),
        ("diffmean", "steer", "selected", 0.5, 30.0),
    ]:
        r = out.loc[(method, setting, control)]
        assert (r["success"], r["relevance"]) == (success, relevance)
        assert r["combined"] == pytest.approx(harmonic(success, relevance))
    assert out.loc[("lape", "none", "none"), "combined"] == 0.0  # no success
    # alone, lape's best relevance is its own 15
    alone = summarize({("lape", "en", "fr"): lape}).set_index(["setting", "control"])
    assert alone.loc[("both", "selected"), "combined"] == pytest.approx(1.0)
    chosen = best_settings(summarize({("lape", "en", "fr"): lape}))
    assert chosen[["method", "setting", "strength"]].values.tolist() == [["lape", "both", 2.0]]
    assert chosen["combined"].tolist() == [pytest.approx(1.0)]
    assert chosen["random_success"].tolist() == [0.5]
    assert chosen["random_relevance"].tolist() == [10.0]
    assert chosen["random_combined"].tolist() == [
        pytest.approx(2 * 0.5 * (10 / 15) / (0.5 + 10 / 15))
    ]
    # both methods: one best row each; DiffMean has no random control here (NaN)
    both = best_settings(summary).set_index("method")
    assert both.loc["lape", "setting"] == "both" and both.loc["diffmean", "setting"] == "steer"
    assert math.isnan(both.loc["diffmean", "random_success"])


# ---------------------------------------------------------------------- generation


def test_greedy_continuations_are_deterministic_and_stop(tiny_model, tiny_tokenizer, sentences):
    model = tiny_model("qwen2").double()
    prompts = [sentences["en"][i] for i in range(3)]
    a = greedy_continuations(model, tiny_tokenizer, prompts, 6, batch_size=2)
    b = greedy_continuations(model, tiny_tokenizer, prompts, 6, batch_size=2)
    assert a == b
    assert len(a[0]) == len(a[1]) == 3 and all(len(ids) <= 6 for ids in a[1])
    assert a[0] == [tiny_tokenizer(p)["input_ids"] for p in prompts]
    stops = stop_token_ids(model, tiny_tokenizer)
    assert stops and not any(t in stops for ids in a[1] for t in ids)
    # one prompt at a time gives the same continuations (left padding is masked)
    for i, p in enumerate(prompts):
        assert greedy_continuations(model, tiny_tokenizer, [p], 6)[1][0] == a[1][i]
    assert all(len(ids) == 6 for ids in a[1])  # the random model never stops by itself
    # force a stop token as row 0's third new token: its continuation ends before it, the
    # other rows are unchanged (finished rows are padded, the pads are not returned)
    calls = []

    def stop_row0(_m, _a, logits):
        calls.append(1)
        if len(calls) == 3:
            logits = logits.clone()
            logits[0, -1, stops[0]] += 1e4
        return logits

    h = lm_head(model).register_forward_hook(stop_row0)
    try:
        _, cut = greedy_continuations(model, tiny_tokenizer, prompts, 6, batch_size=3)
    finally:
        h.remove()
    assert cut == [a[1][0][:2], a[1][1], a[1][2]]


@pytest.mark.parametrize("head_positions", [1, 4, 10**6])  # head calls: per batch .. one
def test_continuation_nll_is_a_direct_log_likelihood(
    tiny_model, tiny_tokenizer, sentences, monkeypatch, head_positions
):
    monkeypatch.setattr(generation, "HEAD_POSITIONS", head_positions)
    model = tiny_model("gemma3_text").double()  # softcapped logits
    prompts = [sentences["fr"][0], sentences["de"][1] + " " + sentences["de"][2]]
    prompts += [sentences["en"][0], sentences["zh"][1]]
    prompt_ids, new_ids = greedy_continuations(model, tiny_tokenizer, prompts, 5)
    new_ids[1] = new_ids[1][:3]
    new_ids[2] = []  # skipped, the others still scored
    got = continuation_nll(model, prompt_ids, new_ids, batch_size=2)
    assert math.isnan(got[2][0]) and got[2][1] == 0
    del prompt_ids[2], new_ids[2], got[2]
    for p, n, (total, count) in zip(prompt_ids, new_ids, got, strict=True):
        ids = torch.tensor([p + n])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        want = -sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(n))
        assert count == len(n) and total == pytest.approx(want, rel=1e-9)
    assert math.isnan(continuation_nll(model, prompt_ids[:1], [[]])[0][0])


def test_aligned_prompts_pair_documents_by_id(corpus_writer):
    def en(d):
        return f"first part {d} and the second part {d} here"

    def fr(d):
        return f"première partie {d} et la seconde {d} ici"

    src = corpus_writer(
        "en",
        [{"doc_id": d, "text": en(d)} for d in ("a", "b", "c")]
        + [{"doc_id": "t", "text": en("t"), "split": "train"}],
    )
    tgt = corpus_writer(
        "fr",
        [{"doc_id": d, "text": fr(d)} for d in ("b", "c", "z")]
        + [{"doc_id": "t", "text": fr("t"), "split": "train"}],  # shared, but not eval
    )
    prompts = aligned_prompts(src, tgt, 5)
    assert sorted(p.doc_id for p in prompts) == ["b", "c"]
    assert [p.doc_id for p in prompts] == [p.doc_id for p in aligned_prompts(src, tgt, 5)]
    by_id = {p.doc_id: p for p in prompts}
    # by hand: 39 characters, the half cut at the space before character 20
    assert by_id["b"].text == "first part b and the"
    assert by_id["b"].source_rest == "second part b here"
    # the aligned French document: 37 characters, cut at the space before character 18
    assert by_id["b"].target_rest == "et la seconde b ici"
    assert by_id["c"].target_rest == "et la seconde c ici"
    assert len(aligned_prompts(src, tgt, 1)) == 1
    lonely = corpus_writer("de", [{"doc_id": "q", "text": "nichts gemeinsam hier und dort"}])
    with pytest.raises(ValueError, match="share no eval document") as err:
        aligned_prompts(src, lonely, 3)
    assert str(src) in str(err.value) and str(lonely) in str(err.value)
    # documents longer than max_chars are not prompts
    with pytest.raises(ValueError, match="of at most 10 characters"):
        aligned_prompts(src, tgt, 3, max_chars=10)


@pytest.fixture
def steering_case(tiny_model, tiny_tokenizer, sentences, corpus_writer, tmp_path):
    """A tiny Qwen2 (GQA) model in float64, 3 aligned en/fr prompts, and the unit and
    hidden-state statistics of en and fr text computed by unit_statistics."""
    model = tiny_model("qwen2_gqa").double()
    docs = {
        lang: [
            {"doc_id": f"d{i}", "text": sentences[lang][i] + " " + sentences[lang][i + 1]}
            for i in range(3)
        ]
        for lang in ("en", "fr")
    }
    prompts = aligned_prompts(corpus_writer("en", docs["en"]), corpus_writer("fr", docs["fr"]), 3)
    paths = {}
    for lang in ("en", "fr"):
        table, hidden, n = unit_statistics(
            model, tiny_tokenizer, sentences[lang][10:16], max_length=32
        )
        paths[lang] = (tmp_path / f"{lang}.parquet", tmp_path / f"{lang}_hidden.parquet")
        write_parquet(table, paths[lang][0], {"n_tokens": n})
        write_parquet(hidden, paths[lang][1])
    values = unit_values({"fr": paths["fr"][0]}, "positive_mean")
    return model, tiny_tokenizer, prompts, values, paths


def check_rows(df, prompts, tok):
    """Each row's scores recomputed from its generation."""
    rest = {p.doc_id: p for p in prompts}
    for r in df.itertuples():
        assert r.chrf == chrf(r.generation, rest[r.doc_id].target_rest)
        assert r.chrf_source == chrf(r.generation, rest[r.doc_id].source_rest)
        assert r.lang_success == (r.gen_lang == "fr") and r.still_source == (r.gen_lang == "en")
        assert r.prompt == rest[r.doc_id].text


def test_steering_table_batched_equals_one_setting_at_a_time(steering_case):
    model, tok, prompts, values, _ = steering_case
    clf = TokenLanguageClassifier(["en", "fr"])
    src, tgt = [(0, "mlp", 1), (1, "mlp", 2)], [(1, "mlp", 3), (1, "mlp", 40), (1, "mlp", 2)]
    settings = neuron_settings(model, src, tgt, values, [1.0, 300.0], "positive_mean", 1, 0)
    assert [(s.setting, s.control, s.strength) for s in settings] == [
        (setting, control, strength)
        for control in ("selected", "random")
        for setting, strength in [
            ("deactivate", 0.0),
            ("activate", 1.0),
            ("both", 1.0),
            ("activate", 300.0),
            ("both", 300.0),
        ]
    ]
    assert {s.seed for s in settings if s.control == "random"} == {0}
    sel = {s.setting: s.n_units for s in settings if s.control == "selected"}
    rnd = {s.setting: s.n_units for s in settings if s.control == "random"}
    assert sel == rnd == {"deactivate": 1, "activate": 3, "both": 4}  # (1, mlp, 2) only activated
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batched = steering_table(model, tok, prompts, settings, "en", "fr", clf, 5, batch_size=64)
    again = steering_table(model, tok, prompts, settings, "en", "fr", clf, 5, batch_size=64)
    single = steering_table(model, tok, prompts, settings, "en", "fr", clf, 5, batch_size=3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert batched.column_names == COLUMNS and batched.num_rows == 3 * (1 + len(settings))
    a, b = batched.to_pandas(), single.to_pandas()
    assert a.equals(again.to_pandas())  # deterministic, the none rows included
    none = a[a["setting"] == "none"]
    assert len(none) == 3 and (none["control"] == "none").all() and (none["n_units"] == 0).all()
    assert none.equals(again.to_pandas()[lambda d: d["setting"] == "none"])
    # none is the plain greedy continuation of each prompt
    _, plain = greedy_continuations(model, tok, [p.text for p in prompts], 5)
    assert none["generation"].tolist() == [
        tok.decode(i, skip_special_tokens=True).strip() for i in plain
    ]
    # batched side by side = one setting at a time
    assert a["generation"].tolist() == b["generation"].tolist()
    np.testing.assert_allclose(a["ppl"], b["ppl"], rtol=1e-9)
    assert a["chrf"].between(0, 100).all() and (a["n_new_tokens"] <= 5).all()
    check_rows(a, prompts, tok)
    # random controls: as many units as the selected setting, row by row
    key = ["setting", "strength", "doc_id"]
    sel_rows = a[a["control"] == "selected"].set_index(key)["n_units"]
    rnd_rows = a[a["control"] == "random"].set_index(key)["n_units"]
    assert len(sel_rows) == len(rnd_rows) == 3 * 5 and sel_rows.sort_index().equals(
        rnd_rows.sort_index()
    )
    # the interventions act in the batch (a random tiny model needs a large push)
    both = a[(a["setting"] == "both") & (a["control"] == "selected") & (a["strength"] == 300.0)]
    assert both["generation"].tolist() != none["generation"].tolist()


def test_diffmean_settings_and_random_directions(steering_case):
    model, tok, prompts, _, paths = steering_case
    layers = steer_layers(model, [0.0, 0.35, 1.0])
    assert layers == [0, 1] and steer_layers(model, [0.5]) == [0]  # round(0.5) = 0
    d = diffmean_directions(paths["en"][1], paths["fr"][1], [1])
    mu_en, mu_fr = mean_hidden(paths["en"][1]), mean_hidden(paths["fr"][1])
    assert torch.equal(d[1], mu_fr[1] - mu_en[1])
    r = random_directions(d, 0)
    assert torch.allclose(r[1].norm(), d[1].norm()) and not torch.allclose(r[1], d[1])
    assert torch.equal(r[1], random_directions(d, 0)[1])
    assert not torch.equal(r[1], random_directions(d, 1)[1])
    settings = steer_settings(model, d, [0.5, 40.0], n_random=1)
    assert [(s.setting, s.control, s.strength, s.n_units) for s in settings] == [
        ("steer", "selected", 0.5, 1),
        ("steer", "selected", 40.0, 1),
        ("steer", "random", 0.5, 1),
        ("steer", "random", 40.0, 1),
    ]
    clf = TokenLanguageClassifier(["en", "fr"])
    table = steering_table(model, tok, prompts, settings, "en", "fr", clf, 4)
    again = steering_table(model, tok, prompts, settings, "en", "fr", clf, 4, batch_size=3)
    assert table.column_names == COLUMNS and table.num_rows == 3 * (1 + 4)
    df = table.to_pandas()
    assert df.equals(again.to_pandas())  # deterministic; batched = one setting at a time
    check_rows(df, prompts, tok)
    rnd = df[df["control"] == "random"]["n_units"]
    assert (rnd == 1).all() and (df[df["control"] == "selected"]["n_units"] == 1).all()
    none = df[df["setting"] == "none"]["generation"].tolist()
    strong = df[(df["control"] == "selected") & (df["strength"] == 40.0)]["generation"].tolist()
    assert strong != none


def test_settings_validate_units_first(steering_case):
    model, _, _, values, _ = steering_case
    with pytest.raises(ValueError, match="layer 7 out of range"):
        neuron_settings(model, [(7, "mlp", 0)], [], values, [1.0])
    with pytest.raises(ValueError, match="has 64 units"):
        neuron_settings(model, [], [(1, "mlp", 64)], values, [1.0])


def test_cases_table_and_html(steering_case):
    model, tok, prompts, values, _ = steering_case
    clf = TokenLanguageClassifier(["en", "fr"])
    units = [(1, "mlp", 3), (1, "mlp", 7)]
    cases = [
        Case("fr neurons (zero)", "lape", "zero", 2, False, lambda: intervened(model, units)),
        Case(
            "fr neurons (set)",
            "lape",
            "set",
            2,
            True,
            lambda: intervened(model, units, Intervention("set", 50.0), values),
        ),
    ]
    fr, en = ["Le chat <b> & le chien."], [p.text for p in prompts[:2]]
    table = cases_table(model, tok, "fr", fr, en, cases, clf, max_new_tokens=4)
    df = table.to_pandas()
    assert table.column_names == CASE_COLUMNS
    assert (
        df["case"].tolist()
        == ["no intervention"] * 3 + ["fr neurons (zero)"] * 1 + ["fr neurons (set)"] * 2
    )
    assert df["prompt_lang"].tolist() == ["fr", "en", "en", "fr", "en", "en"]
    _, plain = greedy_continuations(model, tok, fr, 4)
    assert df["generation"][0] == tok.decode(plain[0], skip_special_tokens=True)
    page = cases_html(table, "tiny <qwen>")
    assert "Le chat &lt;b&gt; &amp; le chien." in page and "tiny &lt;qwen&gt;" in page
    assert page.count("<tr>") == 1 + len(df)


# ----------------------------------------------------------------- config errors


def config_with(**sections):
    cfg = load_config("tiny")
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def test_the_tiny_config_with_steering_is_valid():
    cfg = validate_config(config_with(steering={"pairs": [["en", "fr"], ["zh", "en"]]}))
    assert cfg["steering"]["pairs"] == [["en", "fr"], ["zh", "en"]]


@pytest.mark.parametrize(
    ("sections", "messages"),
    [
        (
            {"ablation": {"interventions": ["zero", "erase"]}},
            ["'erase' is not one of", "['ablation']['interventions'][1]"],
        ),
        (
            {"steering": {"strengths": [1.0, "2"]}},
            ["'2' is not of type 'number'", "['steering']['strengths'][1]"],
        ),
        ({"steering": {"steer_strengths": [True]}}, ["['steering']['steer_strengths'][0]"]),
        (
            {"steering": {"pairs": [["en", "fr"], ["en", "ko"]]}},
            ["steering.pairs: 'ko' of the pair en->ko is not one of languages: (en, fr, zh)"],
        ),
        (
            {"steering": {"pairs": [["de", "en"]]}},
            ["steering.pairs: 'de' of the pair de->en is not one of languages"],
        ),
        (
            {"steering": {"pairs": [["fr", "fr"]]}},
            ["steering.pairs: fr->fr steers a language to itself"],
        ),
        ({"steering": {"methods": ["lape", "magic"]}}, ["'magic'", "['steering']['methods']"]),
        (
            {"ablation": {"mean_reference": "ja"}},
            ["ablation.mean_reference: 'ja' is neither 'all' nor one of languages"],
        ),
        (
            {"ablation": {"interventions": ["mean"], "mode": "weights"}},
            ["ablation.interventions ['mean'] act through hooks: set ablation.mode to hooks"],
        ),
    ],
)
def test_bad_steering_config_fails_before_any_model(sections, messages):
    # the schema raises snakemake's WorkflowError, the cross-field checks ValueError
    with pytest.raises(Exception) as err:
        validate_config(config_with(**sections))
    for message in messages:
        assert message in str(err.value), (message, str(err.value))


def test_random_controls_are_disjoint_like_the_selection(tiny_model):
    model = tiny_model("qwen2").double()
    src, tgt = [(1, "mlp", 1), (1, "mlp", 2)], [(1, "mlp", 3), (1, "mlp", 4)]
    values = {(1, "mlp", i): 1.0 for i in range(64)}
    for st in neuron_settings(model, src, tgt, values, [1.0], "mean", 3, 0):
        if st.setting == "both":
            assert st.n_units == 4
    from workflow_scripts.evaluation import steering

    seen = []
    real = steering.random_like
    steering.random_like = lambda sel, cands, seed: seen.append(real(sel, cands, seed)) or seen[-1]
    try:
        neuron_settings(model, src, tgt, values, [1.0], "mean", 3, 0)
    finally:
        steering.random_like = real
    for tgt_draw, src_draw in zip(seen[::2], seen[1::2], strict=True):
        assert not set(tgt_draw) & set(src_draw)

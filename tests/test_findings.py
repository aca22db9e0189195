"""Findings table on synthetic inputs: every claim once holding and once failing,
with hand-computed values; missing inputs; column types; CSV/Parquet round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.evaluation.bootstrap import N_RESAMPLES
from workflow_scripts.evaluation.findings import (
    COLUMNS,
    INTERVAL_COLUMNS,
    _changes,
    findings_table,
    write_findings,
)
from workflow_scripts.io import read_parquet, write_parquet

LANGS = ["en", "fr", "de"]
BASE = {"en": 10.0, "fr": 20.0, "de": 40.0}  # relative change must not depend on base PPL
N_LAYERS = 8  # default_stages(8) == (2, 1)


N_DOCS, DOC_TOKENS = 6, 10


def doc_nll(ppl: float, noise: float, seed: int) -> list[float]:
    """Per-document NLL whose pooled perplexity is exactly ``ppl``: per-token NLL
    ``log(ppl) +- noise``, the signs shuffled per row (documents differ across rows)."""
    signs = np.random.default_rng(seed).permutation([1.0, -1.0] * (N_DOCS // 2))
    return list(DOC_TOKENS * (math.log(ppl) + noise * signs))


def matrix_file(path, settings, n_units=5, metadata=None, noise=0.01, docs=True):
    """PPL table from relative changes: ``settings[(setting, seed)][target] = [change per
    LANGS]``, with per-document NLL (``docs``) that varies by ``noise`` per token."""
    rows = [("base", None, lang, 0, BASE[lang], BASE[lang], -1) for lang in LANGS]
    for (setting, seed), by_target in settings.items():
        for target, changes in by_target.items():
            units = n_units.get(target, 5) if isinstance(n_units, dict) else n_units
            for lang, c in zip(LANGS, changes, strict=True):
                rows.append((setting, target, lang, units, BASE[lang] * (1 + c), BASE[lang], seed))
    names = ["setting", "target_lang", "eval_lang", "n_units", "ppl", "base_ppl", "seed"]
    cols = dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))
    if docs:
        cols["doc_nll"] = [doc_nll(r[4], noise, i) for i, r in enumerate(rows)]
        cols["doc_tokens"] = [[DOC_TOKENS] * N_DOCS for _ in rows]
    write_parquet(cols, path, metadata)
    return path


def selection_file(path, per_layer, per_layer_neurons=4):
    """One row per neuron of every layer; the first ``per_layer[layer]`` are selected."""
    rows = [(la, i, i < n) for la, n in enumerate(per_layer) for i in range(per_layer_neurons)]
    layer, index, selected = (list(c) for c in zip(*rows, strict=True))
    cols = {"layer": layer, "module": ["mlp"] * len(rows), "index": index}
    write_parquet({**cols, "score": [1.0] * len(rows), "selected": selected}, path)
    return path


def inhibition_file(path, shares):
    n = len(shares)
    cols = {"layer": list(range(n)), "inhibited_share": shares, "zero_share": [0.0] * n}
    write_parquet({**cols, "n_positions": [100] * n}, path)
    return path


SCENARIOS = {
    True: {
        "selected": {"en": [1.0, 0.1, 0.2], "fr": [0.1, 0.8, 0.1], "de": [0.3, 0.2, 0.5]},
        "random": (0.01, 0.03),  # per seed, every cell: mean 0.02
        "score": "delta",  # core = bottom
        "mono": {"en": [0.5, 0.1, 0.1], "fr": [0.1, 0.5, 0.1], "de": [0.5, 0.1, 0.2]},
        "inhibition": {"parallel": [0.3, 0.5], "en": [0.2, 0.4], "fr": [0.1, 0.1]},
        "layers": {"en": [3, 1, 0, 0, 0, 0, 0, 2], "fr": [4, 2, 1, 1, 1, 1, 1, 3]},
    },
    False: {
        "selected": {"en": [0.1, 0.5, 0.2], "fr": [0.1, 0.05, 0.3], "de": [0.3, 0.2, 0.5]},
        "random": (0.3, 0.5),  # mean 0.4
        "score": "grad_x_param",  # core = top
        "mono": {t: [0.1, 0.5, 0.1] for t in LANGS},
        "inhibition": {"parallel": [0.2, 0.2], "en": [0.2, 0.4], "fr": [0.1, 0.1]},
        "layers": {"en": [0, 0, 3, 3, 3, 3, 3, 0], "fr": [1, 0, 2, 2, 2, 2, 2, 0]},
    },
}
# (claim_id, method) -> (value, reference), hand-computed from SCENARIOS
EXPECTED = {
    True: {
        "A": (1.0, 0.5),  # 3/3 own hardest; medians own 0.8 vs others 0.15
        "B": (0.8, 0.02),  # 0.8 > 2 * 0.02
        "C": (0.5, 0.3),  # bottom 0.5..0.7 vs max(top, random) <= 0.3; 0.7 > 2 * 0.3 for de
        "D": (2 / 3, 0.5),
        "E": (0.4, 0.3),
        "F": (6.0, 14.0),  # fewer than fr in every layer
        "G": (5.0, 1.0),  # (10 + 5) / 3 edge layers vs 5 / 5 middle
    },
    False: {
        "A": (1 / 3, 0.5),
        "B": (0.1, 0.4),
        "C": (0.05, 0.7),  # core = top: 0.1, 0.2, 0.05 vs bottom up to 0.7
        "D": (1 / 3, 0.5),
        "E": (0.2, 0.3),
        "F": (15.0, 11.0),
        "G": (1 / 3, 5.0),  # 1 / 3 edge layers vs 25 / 5 middle
    },
}


def write_inputs(root, holds: bool) -> dict:
    s = SCENARIOS[holds]
    lo, hi = s["random"]
    settings = {("selected", -1): s["selected"]}
    settings |= {("random", i): {t: [r] * 3 for t in LANGS} for i, r in enumerate((lo, hi))}
    ablation = {
        m: matrix_file(root / f"{m}.parquet", settings) for m in ("plnd", "lape", "actcount")
    }
    ends = {
        ("bottom", -1): {None: [0.5, 0.6, 0.7]},
        ("top", -1): {None: [0.1, 0.2, 0.05]},
        ("random", 0): {None: [0.01, 0.02, 0.3]},
        ("monolingual", -1): s["mono"],
    }
    meta = {"score": s["score"], "k": 0.01, "perturb": "zero"}
    region = matrix_file(root / "region.parquet", ends, metadata=meta)
    inhibition = {
        c: inhibition_file(root / f"{c}.inhibition.parquet", v) for c, v in s["inhibition"].items()
    }
    selections = {
        m: {
            lang: selection_file(root / f"{m}_{lang}.parquet", n) for lang, n in s["layers"].items()
        }
        for m in ("plnd", "lape")
    }
    return {
        "ablation": ablation,
        "region": region,
        "inhibition": inhibition,
        "selections": selections,
    }


@pytest.mark.parametrize("holds", [True, False])
def test_every_claim_holds_or_fails_with_hand_computed_numbers(tmp_path, holds):
    table = findings_table(**write_inputs(tmp_path, holds), model="tiny")
    assert len(table) == 13
    for row in table.itertuples():
        value, reference = EXPECTED[holds][row.claim_id]
        assert (row.value, row.reference) == pytest.approx((value, reference)), row
        assert row.holds == holds, row
    details = dict(zip(table["claim_id"] + "/" + table["method"], table["detail"], strict=True))
    if holds:
        assert details["A/plnd"].startswith("own-language hit hardest for 3/3 targets")
        assert "median own +80.0% vs others +15.0%; random mean +2.0%" in details["A/plnd"]
        assert details["C/region"].startswith("core = bottom (delta)")
        assert "en 6, fr 14" in details["F/lape"]
        assert "first 2 layers 5.0, middle 5 layers 1.0, last 1 layers 5.0" in details["G/plnd"]
    else:
        assert "1/3 targets (not: en +10.0% < fr +50.0%, fr +5.0% < de +30.0%)" in details["A/plnd"]
        assert details["C/region"].startswith("core = top (grad_x_param)")
        assert "parallel 0.200 vs monolingual 0.100 (fr)..0.300 (en)" in details["E/actcount"]


def test_targets_without_neurons_are_skipped_and_b_has_a_floor(tmp_path):
    selected = {"en": [0.015, 0.0, 0.0], "fr": [0.0, 0.015, 0.0], "de": [0.5, 0.5, 0.0]}
    settings = {("selected", -1): selected, ("random", 0): {t: [0.0] * 3 for t in LANGS}}
    path = matrix_file(tmp_path / "plnd.parquet", settings, n_units={"de": 0}, noise=1e-4)
    table = findings_table({"plnd": path}, None, {}, {}, model="tiny").set_index("method")
    a, b = table[table["claim_id"] == "A"].loc["plnd"], table[table["claim_id"] == "B"].loc["plnd"]
    assert (a["value"], a["holds"]) == (1.0, True)  # de (0 neurons) would have been a miss
    assert "2/2 targets" in a["detail"]
    # own change 1.5% vs random 0: fails because random is floored at 1% (1.5% <= 2%)
    assert (b["value"], b["reference"], b["holds"]) == (pytest.approx(0.015), 0.0, False)


def test_missing_inputs_are_not_computed(tmp_path):
    table = findings_table({}, None, {}, {}, model="tiny")
    assert len(table) == 13
    assert table["holds"].isna().all()
    assert table["value"].isna().all() and table["reference"].isna().all()
    assert table["detail"].str.startswith("not computed").all()
    gone = tmp_path / "nope.parquet"
    table = findings_table({"lape": gone}, gone, {"parallel": gone, "en": None}, {}, "tiny")
    assert (table.loc[table["method"] == "lape", "detail"] == f"not computed: {gone}").sum() == 2
    assert table.loc[table["claim_id"] == "E", "detail"].item() == (
        f"not computed: {gone}, en not given"
    )


def test_english_missing_leaves_f_open(tmp_path):
    sel = {lang: selection_file(tmp_path / f"{lang}.parquet", [1] * 4) for lang in ("fr", "de")}
    table = findings_table({}, None, {}, {"plnd": sel}, "tiny")
    f = table[(table["claim_id"] == "F") & (table["method"] == "plnd")].iloc[0]
    assert pd.isna(f["holds"]) and "need en" in f["detail"]
    g = table[(table["claim_id"] == "G") & (table["method"] == "plnd")].iloc[0]
    # 4 layers, stages (1, 1): 2 selected per layer at the ends and in the middle
    assert (g["value"], g["reference"], g["holds"]) == (2.0, 2.0, False)


def test_columns_and_dtypes(tmp_path):
    table = findings_table(**write_inputs(tmp_path, True), model="tiny")
    assert list(table.columns) == COLUMNS + INTERVAL_COLUMNS
    assert table["holds"].dtype == "boolean"
    assert table["ci_low"].dtype == "float64" and table["ci_high"].dtype == "float64"
    assert pd.api.types.is_string_dtype(table["interval"])
    assert table["value"].dtype == "float64" and table["reference"].dtype == "float64"
    for col in ("model", "claim_id", "claim", "source", "method", "measure", "detail"):
        assert pd.api.types.is_string_dtype(table[col]), col
    assert list(table["claim_id"]) == list("AAABBBCDEFFGG")
    assert set(table["source"]) == {
        "Zhao et al. 2024 (PLND)",
        "Tang et al. 2024 (LAPE)",
        "Mu et al. 2024",
        "Zhang et al. 2024",
    }


def test_write_findings_round_trip(tmp_path):
    table = findings_table(**{**write_inputs(tmp_path, False), "region": None}, model="tiny")
    csv, parquet = (
        tmp_path / "out" / "findings_tiny.csv",
        tmp_path / "out" / "findings_tiny.parquet",
    )
    write_findings(table, csv, parquet)
    back = pd.read_csv(csv, dtype={"holds": "boolean", "interval": object})
    back["interval"] = back["interval"].fillna("")  # CSV reads an empty text as missing
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert back["holds"].dtype == "boolean" and back["holds"].isna().sum() == 2
    pd.testing.assert_frame_equal(read_parquet(parquet).to_pandas(), table, check_dtype=False)


def test_incomplete_tables_are_not_computed(tmp_path):
    selected_only = matrix_file(tmp_path / "a.parquet", {("selected", -1): {"en": [1, 0, 0]}})
    no_score = matrix_file(tmp_path / "r.parquet", {("top", -1): {None: [1, 1, 1]}})
    table = findings_table({"plnd": selected_only}, no_score, {}, {}, "tiny")
    by = dict(zip(table["claim_id"] + "/" + table["method"], table.itertuples(), strict=True))
    assert by["A/plnd"].value == 1.0 and "random mean n/a" in by["A/plnd"].detail
    assert pd.isna(by["B/plnd"].holds) and "no random rows" in by["B/plnd"].detail
    for cid in ("C/region", "D/region"):
        assert pd.isna(by[cid].holds) and "no known score" in by[cid].detail


def steering_file(path, rows):
    """A steering table from ``(setting, control, strength, [(doc_id, lang) ...])`` rows."""
    recs = []
    for setting, control, strength, outs in rows:
        for doc, lang in outs:
            recs.append(
                {
                    "doc_id": doc,
                    "setting": setting,
                    "control": control,
                    "strength": strength,
                    "n_units": 4,
                    "gen_lang": lang,
                    "lang_success": lang == "fr",
                    "still_source": lang == "en",
                    "chrf": 30.0 if lang == "fr" else 10.0,
                    "chrf_source": 5.0,
                    "ppl": 10.0,
                    "degenerate": False,
                }
            )
    write_parquet(pd.DataFrame(recs).to_dict("list"), path)
    return path


def test_steering_claims_hand_computed(tmp_path):
    docs = [f"d{i}" for i in range(10)]
    en, fr = [(d, "en") for d in docs], [(d, "fr") for d in docs]
    lape = steering_file(
        tmp_path / "lape.parquet",
        [
            ("none", "none", 0.0, en),
            ("deactivate", "selected", 0.0, [(d, "de") for d in docs]),  # stops writing en
            ("deactivate", "random", 0.0, en),
            ("both", "selected", 2.0, fr[:8] + en[8:]),  # 80% French
            ("both", "random", 2.0, en),
        ],
    )
    diffmean = steering_file(
        tmp_path / "dm.parquet",
        [("none", "none", 0.0, en), ("steer", "selected", 1.0, fr), ("steer", "random", 1.0, en)],
    )
    steering = {("lape", "en", "fr"): lape, ("diffmean", "en", "fr"): diffmean}
    table = findings_table({}, None, {}, {}, "tiny", steering=steering)
    assert len(table) == 13 + 9
    rows = table[table["method"] == "lape"].set_index("claim_id")
    assert rows.loc["H", ["value", "reference"]].tolist() == [0.8, 0.0]
    assert bool(rows.loc["H", "holds"]) and "both x2" in rows.loc["H", "detail"]
    assert rows.loc["I", ["value", "reference"]].tolist() == [0.8, 1.0]  # DiffMean steers better
    assert not bool(rows.loc["I", "holds"])
    assert rows.loc["J", ["value", "reference"]].tolist() == [0.0, 1.0]
    assert bool(rows.loc["J", "holds"])
    other = table[table["method"] == "plnd"].set_index("claim_id")
    assert other.loc["H", "detail"].startswith("not computed")
    assert pd.isna(other.loc["H", "holds"])


def test_intervention_rows_are_labelled(tmp_path):
    changes = {("selected", -1): {"en": [0.5, 0.1, 0.1], "fr": [0.1, 0.6, 0.1], "de": [0, 0, 0.7]}}
    changes[("random", 0)] = {t: [0.01, 0.01, 0.01] for t in LANGS}
    path = matrix_file(tmp_path / "mean.parquet", changes)
    table = findings_table({}, None, {}, {}, "tiny", interventions={"mean": {"lape": path}})
    rows = table[table["method"] == "lape (mean)"]
    assert sorted(rows["claim_id"]) == ["A", "B"] and rows["holds"].all()
    assert (rows["source"] == "Tang et al. 2024 (LAPE)").all()


PERPLEXITY_CLAIMS = ("A/plnd", "B/plnd", "C/region", "D/region")


def test_noisy_documents_widen_the_interval_and_the_claim_is_not_held(tmp_path):
    """The same point estimates as the holding scenario, but documents that disagree
    (per-token NLL +-1.5 around the pooled value): intervals straddle 0, nothing holds."""
    steady = findings_table(**write_inputs(tmp_path / "a", True), model="tiny")
    inputs = write_inputs(tmp_path / "b", True)
    s = SCENARIOS[True]
    settings = {("selected", -1): s["selected"]}
    settings |= {("random", i): {t: [r] * 3 for t in LANGS} for i, r in enumerate(s["random"])}
    inputs["ablation"]["plnd"] = matrix_file(tmp_path / "noisy.parquet", settings, noise=1.5)
    ends = {
        ("bottom", -1): {None: [0.5, 0.6, 0.7]},
        ("top", -1): {None: [0.1, 0.2, 0.05]},
        ("random", 0): {None: [0.01, 0.02, 0.3]},
        ("monolingual", -1): s["mono"],
    }
    meta = {"score": "delta", "k": 0.01, "perturb": "zero"}
    inputs["region"] = matrix_file(tmp_path / "noisyr.parquet", ends, metadata=meta, noise=1.5)
    noisy = findings_table(**inputs, model="tiny")
    for table, held in ((steady, True), (noisy, False)):
        by = dict(zip(table["claim_id"] + "/" + table["method"], table.itertuples(), strict=True))
        for cid in PERPLEXITY_CLAIMS:
            row = by[cid]
            assert row.value == pytest.approx(EXPECTED[True][cid[0]][0])  # same estimate
            assert row.ci_low <= row.ci_high and "documents, seed 0" in row.interval
            assert (row.ci_low > 0) is held and bool(row.holds) is held, row
            assert "95% CI" in row.detail


def test_tables_without_document_nll_are_not_judged(tmp_path):
    s = SCENARIOS[True]
    settings = {("selected", -1): s["selected"], ("random", 0): {t: [0.01] * 3 for t in LANGS}}
    path = matrix_file(tmp_path / "old.parquet", settings, docs=False)
    table = findings_table({"plnd": path}, None, {}, {}, "tiny")
    rows = table[table["method"] == "plnd"].set_index("claim_id")
    assert rows.loc["A", "value"] == 1.0 and pd.isna(rows.loc["A", "holds"])
    assert "not judged" in rows.loc["A", "detail"] and rows.loc["A", "interval"] == ""
    assert pd.isna(rows.loc["B", "holds"]) and pd.isna(rows.loc["B", "ci_low"])


def test_document_resamples_recompute_perplexity_directly(tmp_path):
    """Resample 1 of :func:`_changes` equals pooling the documents it draws by hand."""
    settings = {("selected", -1): {"en": [0.5, 0.1, 0.2]}}
    path = matrix_file(tmp_path / "m.parquet", settings, noise=0.3)
    df, ch = _changes(path)
    assert ch.shape == (len(df), 1 + N_RESAMPLES)
    np.testing.assert_allclose(ch[:, 0], df["ppl"] / df["base_ppl"] - 1)
    table = read_parquet(path).to_pandas()
    rng = np.random.default_rng(0)
    for lang in sorted(LANGS):  # the draws, language by language in code order
        picks = rng.integers(0, N_DOCS, size=(N_RESAMPLES, N_DOCS))[0]
        rows = table[table["eval_lang"] == lang]

        def pooled(row, picks=picks):
            return math.exp(
                sum(row.doc_nll[i] for i in picks) / sum(row.doc_tokens[i] for i in picks)
            )

        base = pooled(next(r for r in rows.itertuples() if r.setting == "base"))
        for r in rows.itertuples():
            assert ch[r.Index, 1] == pytest.approx(pooled(r) / base - 1, rel=1e-12)


def test_layer_intervals_of_e_f_g(tmp_path):
    table = findings_table(**write_inputs(tmp_path, True), model="tiny")
    by = dict(zip(table["claim_id"] + "/" + table["method"], table.itertuples(), strict=True))
    # E: parallel - largest monolingual is 0.1 in every layer, so in every resample
    assert (by["E/actcount"].ci_low, by["E/actcount"].ci_high) == pytest.approx((0.1, 0.1))
    # F: fr has one more neuron than en in each of the 8 layers: 8 in every resample
    assert (by["F/plnd"].ci_low, by["F/plnd"].ci_high) == pytest.approx((8.0, 8.0))
    # G: middle layers all 1; edge layers 7, 3, 5 resampled: 3 - 1 <= margin <= 7 - 1
    g = by["G/plnd"]
    assert 2.0 <= g.ci_low < 4.0 < g.ci_high <= 6.0 and "layers, seed 0" in g.interval

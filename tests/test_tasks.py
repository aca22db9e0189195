"""Task data, prompts, metrics, option scoring, inhibited shares, layer-stage cells and the
collected tables (docs/methods.md, "Task evaluation"), on tiny models and small corpora."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.config import validate_config
from workflow_scripts.evaluation.ablation import all_units
from workflow_scripts.evaluation.generation import greedy_continuations
from workflow_scripts.neurons.actcount import count_activations
from workflow_scripts.tasks import metrics
from workflow_scripts.tasks.build import build_task, load_task, write_task
from workflow_scripts.tasks.evaluate import evaluate_prompts, option_pairs
from workflow_scripts.tasks.experiments import layer_stage_table, pim_table
from workflow_scripts.tasks.inhibition import inhibited_shares
from workflow_scripts.tasks.prompts import Prompt, task_prompts
from workflow_scripts.tasks.stages import CELLS, cell_units
from workflow_scripts.tasks.summary import pim_summary, stage_summary

LANGS = ("en", "de", "fr", "es")
TRANSLATION = {
    "source": "corpus",
    "type": "translation",
    "max_items": 10,
    "max_chars": 300,
    "n_fewshot_pool": 4,
    "fewshot_max_chars": 300,
    "n_options": 4,
}
CLOZE = {**TRANSLATION, "type": "continuation"}
SETTINGS = {
    "pim_languages": ["fr", "es", "de"],
    "pim_k": 2,
    "n_items": 4,
    "n_shots": 2,
    "chat_template": "auto",
    "system_prompt": "",
    "max_new_tokens": 6,
    "batch_size": 3,
    "max_length": 512,
    "inhibition": True,
    "stages": None,
    "seed": 0,
    "n_random": 1,
    "ppl": {"max_length": 32, "batch_size": 2, "max_tokens": 40},
}


def _docs(lang: str, sentences, n_pages: int = 12, per_page: int = 2) -> list[dict]:
    """Aligned paragraphs: doc ``p{i}#{j}`` on page ``p{i}``, the same ids in every language;
    pages 0-5 eval, the rest train."""
    words = sentences[lang if lang in sentences else "en"]
    docs = []
    for i in range(n_pages):
        for j in range(per_page):
            text = f"[{lang} {i}.{j}] " + " ".join(
                words[(3 * i + j + k) % len(words)] for k in (0, 1)
            )
            split = "eval" if i < 6 else "train"
            docs.append({"doc_id": f"p{i}#{j}", "text": text, "group_id": f"p{i}", "split": split})
    return docs


@pytest.fixture
def task_files(corpus_writer, sentences, tmp_path):
    """``kind -> {lang: task table path}`` for a translation and a cloze task."""
    out = {"translation": {}, "cloze": {}}
    for lang in LANGS:
        corpus = corpus_writer(lang, _docs(lang, sentences))
        for kind, spec in (("translation", TRANSLATION), ("cloze", CLOZE)):
            path = tmp_path / kind / f"{lang}.parquet"
            write_task(build_task(spec, lang, corpus, kind), path, kind, lang, kind, spec)
            out[kind][lang] = path
    return out


# --------------------------------------------------------------------------- data


def test_task_tables_align_by_id_and_keep_shots_off_test_pages(task_files):
    tests = {lang: load_task(p)[0] for lang, p in task_files["translation"].items()}
    shots = {lang: load_task(p)[1] for lang, p in task_files["translation"].items()}
    assert list(tests["en"]) == list(tests["de"])  # same ids, same (hash) order
    for doc_id, row in tests["de"].items():
        assert row["input"].startswith("[de ") and row["reference"] == row["input"]
        assert (
            tests["en"][doc_id]["input"].split("]")[0].split()[1]
            == row["input"].split("]")[0].split()[1]
        )
    test_groups = {r["group_id"] for r in tests["en"].values()}
    assert test_groups and not test_groups & {r["group_id"] for r in shots["en"].values()}
    assert len(tests["en"]) == 10 and len(shots["en"]) == 4


def test_cloze_options_hold_the_true_continuation(task_files):
    tests, _ = load_task(task_files["cloze"]["fr"])
    labels = set()
    for row in tests.values():
        assert len(row["options"]) == 4 and len(set(row["options"])) == 4
        assert row["options"][row["label"]] == row["reference"]
        labels.add(row["label"])
    assert len(labels) > 1  # the correct position varies


def test_build_task_errors_name_the_culprit(corpus_writer, tmp_path):
    corpus = corpus_writer("xx", [{"text": "a" * 500, "split": "eval"}])
    with pytest.raises(ValueError, match="task 'tr', language 'fr': no test item"):
        build_task(TRANSLATION, "fr", corpus, "tr")
    with pytest.raises(ValueError, match="unknown source"):
        build_task({**TRANSLATION, "source": "web"}, "fr", corpus, "tr")


# ------------------------------------------------------------------------ prompts


def _tables(files):
    tests, shots = {}, {}
    for lang, path in files.items():
        tests[lang], shots[lang] = load_task(path)
    return tests, shots


def test_pim_and_repeat_prompts_compare_the_same_items(task_files):
    tests, shots = _tables(task_files["translation"])
    out = {}
    for condition in ("monolingual", "pim", "repeat"):
        prompts, chat = task_prompts(
            "translation",
            TRANSLATION,
            tests,
            shots,
            "en",
            "de",
            condition,
            ["de", "fr", "es"],
            2,
            3,
            1,
        )
        assert not chat
        out[condition] = prompts
    assert (
        [p.id for p in out["pim"]]
        == [p.id for p in out["monolingual"]]
        == [p.id for p in out["repeat"]]
    )
    p = out["pim"][0]
    query = p.text.split("\n\n")[-1]
    # helpers never include the target; translations first, the source last
    assert query.splitlines()[0].startswith("French: [fr ")
    assert query.splitlines()[1].startswith("Spanish: [es ")
    assert query.splitlines()[2].startswith("English: [en ") and query.endswith("\nGerman:")
    assert "Translate the English text into German." == p.text.split("\n\n")[0]
    assert p.reference == tests["de"][p.id]["input"]
    rep = out["repeat"][0].text.split("\n\n")[-1].splitlines()
    assert rep[:3] == [rep[0]] * 3 and rep[0].startswith("English: [en ")
    mono = out["monolingual"][0].text.split("\n\n")[-1].splitlines()
    assert len(mono) == 2 and mono[0] == rep[0]
    # the one shot is rendered in the condition, answered in the target language
    shot = p.text.split("\n\n")[1].splitlines()
    assert shot[0].startswith("French: [fr ") and shot[-1].startswith("German: [de ")


def test_shots_never_come_from_the_item_group(task_files):
    tests, _ = _tables(task_files["translation"])
    # few-shot pool = the test rows themselves: each item must skip its own page
    prompts, _ = task_prompts(
        "translation", TRANSLATION, tests, tests, "en", "de", "monolingual", [], 0, 6, 2
    )
    for p in prompts:
        page = tests["en"][p.id]["group_id"].removeprefix("p")
        shots = p.text.split("\n\n")[1:-1]
        assert len(shots) == 2 and all(f"[en {page}." not in s for s in shots)


class _ChatTokenizer:
    """A tokenizer stand-in with a chat template (only what task_prompts reads)."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        text = "".join(f"<{m['role']}>{m['content']}</s>" for m in messages)
        return text + "<assistant>"


def test_chat_template_used_when_present_and_not_when_absent(task_files, tiny_tokenizer):
    tests, shots = _tables(task_files["cloze"])
    args = ("choice", CLOZE, tests, shots, "de", None, "monolingual", [], 0, 2, 2)
    chat_prompts, chat = task_prompts(*args, tokenizer=_ChatTokenizer())
    assert chat
    text = chat_prompts[0].text
    assert (
        text.count("<user>") == 3
        and text.count("<assistant>") == 3
        and text.endswith("<assistant>")
    )
    assert all(not o.startswith(" ") for o in chat_prompts[0].options)
    plain, chat = task_prompts(*args, tokenizer=tiny_tokenizer)
    assert not chat and "<user>" not in plain[0].text
    assert tiny_tokenizer.chat_template is None or "chat_template" not in dir(tiny_tokenizer)
    never, chat = task_prompts(*args, tokenizer=_ChatTokenizer(), chat_template="never")
    assert not chat and never[0].text == plain[0].text
    with pytest.raises(ValueError, match="no chat template"):
        task_prompts(*args, tokenizer=tiny_tokenizer, chat_template="always")


# ------------------------------------------------------------------------ metrics


def test_bleu_on_a_hand_computed_pair():
    # precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    assert metrics.sentence_bleu(hyp, ref) == pytest.approx(expected, abs=1e-6)
    assert metrics.corpus_scores([hyp], [ref])["bleu"] == pytest.approx(expected, abs=1e-6)
    assert metrics.corpus_scores([ref], [ref])["chrf"] == pytest.approx(100.0)
    assert metrics.corpus_scores(["xyz"], ["abc"])["chrf"] == 0.0
    assert metrics.bleu_tokenizer("zh") == "zh" and metrics.bleu_tokenizer("de") == "13a"


def test_accuracy_exact_match_and_f1_by_hand():
    lls = [[-1.0, -2.0], [-3.0, -0.5], [-1.0, -1.0]]
    labels = [0, 0, 1]
    assert [metrics.choice_correct(ll, y) for ll, y in zip(lls, labels, strict=True)] == [1, 0, 0]
    assert metrics.number_match("so she has 1,250.0 apples", "1250") == 1.0
    assert metrics.number_match("18 then 19", "18") == 0.0
    assert metrics.last_number("no number") is None
    assert metrics.qa_exact_match("The Paris.", "paris") == 1.0
    assert metrics.qa_f1("in the city of Paris", "Paris city") == pytest.approx(
        2 * (2 / 4) * 1 / 1.5
    )


# -------------------------------------------------------------- option scoring


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_option_loglik_equals_a_direct_computation(tiny_model, tiny_tokenizer, arch):
    model = tiny_model(arch)
    prompt = Prompt("x", "the house is", " red", (" red", " very big", " green tree"), 1)
    settings = {"max_new_tokens": 1, "batch_size": 2, "max_length": 64}
    row = evaluate_prompts(model, tiny_tokenizer, [prompt], "choice", "acc", False, settings)[0]
    direct = []
    for ctx, cont in option_pairs(tiny_tokenizer, prompt, False, 64):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        direct.append(sum(float(logp[len(ctx) + i - 1, t]) for i, t in enumerate(cont)))
    assert row["loglik"] == pytest.approx(direct, abs=1e-4)
    assert row["acc"] == float(int(np.argmax(direct)) == 1)
    per_char = [v / len(o) for v, o in zip(direct, prompt.options, strict=True)]
    assert row["acc_norm"] == float(int(np.argmax(per_char)) == 1)
    assert row["score"] == row["acc"]


def test_stop_string_ends_a_row_and_is_cut(tiny_model, tiny_tokenizer):
    model = tiny_model("qwen2")
    _, free = greedy_continuations(model, tiny_tokenizer, ["la maison"], max_new_tokens=8)
    text = tiny_tokenizer.decode(free[0], skip_special_tokens=True)
    stop = text.strip()[:1]
    _, cut = greedy_continuations(
        model, tiny_tokenizer, ["la maison"], max_new_tokens=8, stop_strings=[stop]
    )
    assert 0 < len(cut[0]) <= len(free[0])
    assert cut[0] == free[0][: len(cut[0])]  # the same greedy tokens, ended early
    assert stop in tiny_tokenizer.decode(cut[0])


# ------------------------------------------------------------ inhibited shares


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_inhibited_shares_equal_activation_counting_on_the_same_generation(
    tiny_model, tiny_tokenizer, arch
):
    model = tiny_model(arch)
    prompts = ["the cat sees", "le chat voit la"]
    prompt_ids, new_ids = greedy_continuations(model, tiny_tokenizer, prompts, max_new_tokens=5)
    shares = inhibited_shares(model, prompt_ids, new_ids, batch_size=2)
    for prompt, share, new in zip(prompts, shares, new_ids, strict=True):
        counts = count_activations(model, tiny_tokenizer, [prompt], max_new_tokens=5, batch_size=1)
        table = counts.inhibition_table().to_pandas()
        assert int(table["n_positions"].iloc[0]) == len(new)
        assert share == pytest.approx(table["inhibited_share"].mean(), abs=1e-6)
    assert math.isnan(inhibited_shares(model, [[1, 2]], [[]])[0])


# ------------------------------------------------------------------ layer stages


def test_cells_partition_the_selection(tiny_model):
    model = tiny_model("qwen2", num_layers=4)  # stages (1, 1)
    units = all_units(model, ["mlp", "q", "o"])[::7]
    n = len(model.model.layers)
    parts = {cell: cell_units(units, cell, n) for cell in CELLS}
    pieces = [u for c in CELLS if c != "all" for u in parts[c]]
    assert sorted(pieces) == sorted(units) == parts["all"]
    assert len(pieces) == len(set(pieces))
    assert {u[0] for u in parts["understanding"]} == {0}
    assert {u[0] for u in parts["generation"]} == {n - 1}
    assert {u[1] for u in parts["task_attention"]} <= {"q", "o"}
    assert {u[1] for u in parts["task_ffn"]} == {"mlp"}
    with pytest.raises(ValueError, match="unknown layer-stage cell"):
        cell_units(units, "middle", n)


def test_layer_stage_table_deactivates_the_cell_only(
    tiny_model, tiny_tokenizer, task_files, sentences
):
    model = tiny_model("qwen2", num_layers=4)
    files = {"de": task_files["cloze"]["de"], "en": task_files["cloze"]["en"]}
    texts = {lang: sentences[lang][:3] for lang in ("de", "en")}
    units = all_units(model, ["mlp"])[::3]
    base, _ = layer_stage_table(
        model, tiny_tokenizer, CLOZE, "choice", files, "de", "none", units, texts, SETTINGS
    )
    cut, meta = layer_stage_table(
        model, tiny_tokenizer, CLOZE, "choice", files, "de", "task_ffn", units, texts, SETTINGS
    )
    b, c = base.to_pandas(), cut.to_pandas()
    assert set(b["control"]) == {"none"} and set(c["control"]) == {"selected", "random"}
    assert set(c["eval_lang"]) == {"de", "en"} and set(c["id"]) == set(b["id"])
    n_cell = len(cell_units(units, "task_ffn", len(model.model.layers)))
    assert set(c["n_units"]) == {n_cell}
    sel = c[(c["control"] == "selected") & (c["eval_lang"] == "de")].set_index("id")["loglik"]
    ref = b[b["eval_lang"] == "de"].set_index("id")["loglik"]
    assert any(not np.allclose(sel[i], ref[i]) for i in ref.index)  # the cell changed scores
    assert meta["ppl"]["de/selected/-1"]["ppl"] != meta["ppl"]["de/random/0"]["ppl"]
    again, _ = layer_stage_table(
        model, tiny_tokenizer, CLOZE, "choice", files, "de", "none", units, texts, SETTINGS
    )
    pd.testing.assert_frame_equal(again.to_pandas(), b)  # restored exactly after the cell


def test_pim_table_scores_every_item_and_keeps_generations(tiny_model, tiny_tokenizer, task_files):
    model = tiny_model("llama")
    table, meta = pim_table(
        model,
        tiny_tokenizer,
        TRANSLATION,
        "translation",
        task_files["translation"],
        "en",
        "de",
        "pim",
        SETTINGS,
    )
    df = table.to_pandas()
    assert len(df) == SETTINGS["n_items"] and meta == {
        "chat_template": False,
        "metric": "chrf",
        "n_items": 4,
    }
    assert df["prompt"].str.endswith("German:").all() and df["generation"].notna().all()
    assert df["inhibited_share"].between(0, 1).all()
    assert (df["score"] == df["chrf"]).all() and df["bleu"].between(0, 100).all()


# ---------------------------------------------------------------- summaries


def _pim_rows(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for condition, values in scores.items():
        for i, v in enumerate(values):
            rows.append(
                {
                    "task": "t",
                    "subset": "en-de",
                    "condition": condition,
                    "metric": "chrf",
                    "id": f"i{i}",
                    "score": v,
                    "inhibited_share": 0.5 + v / 1000,
                    "bleu": v,
                    "generation": "one two three four five",
                    "reference": "one two three four five",
                    "target": "de",
                }
            )
    return pd.DataFrame(rows)


def test_pim_summary_paired_differences_by_hand():
    df = _pim_rows({"monolingual": [10, 20, 30], "pim": [15, 20, 40], "repeat": [10, 10, 10]})
    s = pim_summary(df).set_index("condition")
    assert s.loc["pim", "score"] == pytest.approx(25.0)
    assert s.loc["pim", "vs_monolingual"] == pytest.approx(5.0)
    assert s.loc["pim", "vs_repeat"] == pytest.approx(15.0)
    assert s.loc["pim", "vs_monolingual_low"] <= 5.0 <= s.loc["pim", "vs_monolingual_high"]
    assert s.loc["pim", "inhibited_vs_monolingual"] == pytest.approx(0.005)
    assert s.loc["pim", "bleu_vs_monolingual"] == pytest.approx(5.0)  # per-item sentence BLEU
    assert s.loc["pim", "bleu_vs_repeat_low"] <= 15.0 <= s.loc["pim", "bleu_vs_repeat_high"]
    assert s.loc["monolingual", "bleu"] == pytest.approx(100.0)  # generation == reference
    assert np.isnan(s.loc["repeat"].get("vs_repeat", np.nan))


def test_stage_summary_drop_and_ppl_change_by_hand():
    rows = []
    for cell, control, seed, scores in [
        ("none", "none", -1, [1, 1, 0, 1]),
        ("understanding", "selected", -1, [0, 1, 0, 0]),
        ("understanding", "random", 0, [1, 1, 0, 1]),
    ]:
        for i, s in enumerate(scores):
            rows.append(
                {
                    "task": "c",
                    "subset": "de",
                    "condition": f"stage-{cell}",
                    "eval_lang": "de",
                    "control": control,
                    "seed": seed,
                    "id": f"i{i}",
                    "score": float(s),
                    "n_units": 5,
                }
            )
    ppl = pd.DataFrame(
        [
            {
                "task": "c",
                "subset": "de",
                "cell": "none",
                "eval_lang": "de",
                "control": "none",
                "seed": -1,
                "ppl": 10.0,
            },
            {
                "task": "c",
                "subset": "de",
                "cell": "understanding",
                "eval_lang": "de",
                "control": "selected",
                "seed": -1,
                "ppl": 15.0,
            },
            {
                "task": "c",
                "subset": "de",
                "cell": "understanding",
                "eval_lang": "de",
                "control": "random",
                "seed": 0,
                "ppl": 10.5,
            },
        ]
    )
    s = stage_summary(pd.DataFrame(rows), ppl).set_index("control")
    assert s.loc["selected", "drop"] == pytest.approx(0.5) and s.loc["random", "drop"] == 0.0
    assert s.loc["selected", "ppl_change"] == pytest.approx(0.5)
    assert s.loc["random", "ppl_change"] == pytest.approx(0.05)


# ------------------------------------------------------------------ config errors


def _config(**changes):
    import yaml

    from workflow_scripts.config import REPO

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for key, value in changes.items():
        cfg[key] = value
    return copy.deepcopy(cfg)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pim": {"tasks": ["nope"]}}, "unknown task 'nope'"),
        ({"layer_stages": {"tasks": ["translation"]}}, "is a translation task"),
        ({"pim": {"directions": [["en", "en"]]}}, "translates a language to itself"),
        ({"pim": {"k": 5, "directions": [["en", "de"]]}}, "pim.k = 5"),
        ({"pim": {"directions": [["en", "pt"]]}}, "'pt' is not one of languages"),
        ({"layer_stages": {"languages": ["en", "de"]}}, "en is the comparison language"),
        ({"tasks": {"x": {"source": "corpus", "corpus": "web"}}}, "tasks.x.corpus"),
        ({"tasks": {"x": {"source": "huggingface"}}}, "needs a benchmark"),
        ({"tasks": {"x": {"source": "translated:gsm"}}}, "names no dataset"),
    ],
)
def test_config_errors_name_the_culprit(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_config(_config(**changes))


def test_hub_layout_benchmarks_evaluate_through_the_task_stage(
    tmp_path, tiny_model, tiny_tokenizer
):
    """FLORES+ and XNLI in their hub layout (local directories): built, prompted, scored."""
    from task_fixtures import write_flores, write_xnli

    model = tiny_model("qwen2")
    common = {"source": "huggingface", "max_items": 3, "n_fewshot_pool": 2, "max_chars": 300}
    settings = {"max_new_tokens": 4, "batch_size": 2, "max_length": 256}
    for bench, writer, kind in (
        ("flores", write_flores, "translation"),
        ("xnli", write_xnli, "choice"),
    ):
        spec = {
            **common,
            "benchmark": bench,
            "dataset": str(writer(tmp_path / bench, ["en", "de"])),
        }
        files = {}
        for lang in ("en", "de"):
            files[lang] = tmp_path / f"{bench}_{lang}.parquet"
            write_task(build_task(spec, lang, None, bench), files[lang], bench, lang, kind, spec)
        tests, shots = _tables(files)
        target = "de" if kind == "translation" else None
        prompts, _ = task_prompts(
            kind, spec, tests, shots, "en", target, "monolingual", [], 0, 3, 1
        )
        assert len(prompts) == 3
        metric = "chrf" if kind == "translation" else "acc"
        rows = evaluate_prompts(model, tiny_tokenizer, prompts, kind, metric, False, settings, "de")
        assert all(0 <= r["score"] <= 100 for r in rows)
        if kind == "choice":
            assert prompts[0].options == (" True", " Neither", " False")
            assert "Question: [en] " in prompts[0].text and prompts[0].text.endswith("Answer:")
        else:
            assert prompts[0].reference.startswith("[deu_Latn]") and prompts[0].text.endswith(
                "German:"
            )


@pytest.mark.parametrize(
    "task, lang, message",
    [
        ("nope", "de", "unknown task 'nope'"),
        ("xnli", "ko", "language 'ko'"),
        ("xnli_field", "de", "no field 'sentence'"),
    ],
)
def test_bad_task_requests_fail_clearly_and_write_nothing(tmp_path, task, lang, message):
    """Through Snakemake: an unknown task, a language the dataset lacks, a missing field."""
    from conftest import load_config, run_snakemake
    from task_fixtures import write_xnli

    root = str(write_xnli(tmp_path / "xnli", ["en", "de"]))
    xnli = {"source": "huggingface", "benchmark": "xnli", "dataset": root, "max_items": 3}
    tasks = {"xnli": xnli, "xnli_field": {**xnli, "fields": {"input": "sentence"}}}
    cfg = load_config(
        "tiny", tasks=tasks, pim={"tasks": []}, layer_stages={"tasks": []}, finetune={}
    )
    cfg["languages"] = ["en", "fr", "zh", "de", "ko"]
    workdir = tmp_path / "work"
    target = f"results/tasks/{task}/{lang}.parquet"
    proc, out = run_snakemake(workdir, cfg, target, timeout=300)
    assert proc.returncode != 0 and message in out, out[-2000:]
    assert not (workdir / target).exists()


# ------------------------------------------------------------------- claims K-O


def _eval_file(path, rows, **meta):
    from workflow_scripts.io import write_parquet

    cols = {k: [r[k] for r in rows] for k in rows[0]}
    write_parquet(cols, path, metadata={"metric": "chrf", **meta})
    return path


def test_pim_claims_hold_only_when_the_interval_excludes_zero(tmp_path):
    from workflow_scripts.tasks.claims import pim_claims

    def files(gain):
        out = []
        for c, shift in (("monolingual", 0.0), ("pim", gain), ("repeat", 0.0)):
            rows = [
                {
                    "condition": c,
                    "id": f"i{i}",
                    "score": 10.0 + i + shift * (1 + i % 2),
                    "inhibited_share": 0.5 + (0.01 if c == "pim" else 0.0),
                }
                for i in range(20)
            ]
            out.append(_eval_file(tmp_path / f"{gain}{c}.parquet", rows, task="tr", subset="en-de"))
        return out

    k, ell = pim_claims(files(5.0))
    assert k["claim_id"] == "K" and k["holds"] and k["value"] - k["reference"] == pytest.approx(7.5)
    assert k["ci_low"] > 0 and "pim - repeat (length control) +7.50" in k["detail"]
    assert ell["holds"] and ell["value"] - ell["reference"] == pytest.approx(0.01)
    k0, _ = pim_claims(files(0.0))
    assert k0["holds"] is False and k0["ci_low"] <= 0 <= k0["ci_high"]
    assert pim_claims([])[0]["holds"] is None


def test_stage_claims_by_hand(tmp_path):
    from workflow_scripts.tasks.claims import stage_claims

    paths = []
    # understanding: fr drops by 1 where random does not, en unaffected; task_ffn > attention
    drops = {
        "understanding": {"fr": 1.0, "en": 0.0},
        "task_ffn": {"fr": 1.0, "en": 0.0},
        "task_attention": {"fr": 0.0, "en": 0.0},
        "generation": {"fr": 0.0, "en": 0.0},
    }
    for cell, by_lang in drops.items():
        rows = []
        for ev, d in by_lang.items():
            for i in range(12):
                rows.append(
                    {
                        "condition": f"stage-{cell}",
                        "eval_lang": ev,
                        "control": "selected",
                        "seed": -1,
                        "id": f"i{i}",
                        "score": 1.0 - d * (i % 2),
                    }
                )
                rows.append(
                    {
                        "condition": f"stage-{cell}",
                        "eval_lang": ev,
                        "control": "random",
                        "seed": 0,
                        "id": f"i{i}",
                        "score": 1.0,
                    }
                )
        paths.append(_eval_file(tmp_path / f"{cell}.parquet", rows, task="c", subset="fr"))
    m, o, n = stage_claims(paths)
    assert (m["claim_id"], m["holds"], m["value"], m["reference"]) == ("M", True, 0.5, 0.0)
    assert (o["claim_id"], o["holds"]) == ("O", False)
    assert (n["claim_id"], n["holds"], n["value"], n["reference"]) == ("N", True, 0.5, 0.0)
    assert m["source"] == "Zhao et al. 2024 (PLND)" and m["method"] == "plnd (c)"

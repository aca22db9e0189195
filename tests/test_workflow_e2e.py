"""End to end: a real ``snakemake --cores 2`` run of the repo's Snakefile in a scratch
directory, with two tiny models pretrained on three languages of the bundled corpus
(tests/configs/tiny.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import zipfile

import pyarrow.parquet as pq
import pytest
from conftest import load_config, run_snakemake

from workflow_scripts.config import REPO
from workflow_scripts.evaluation.ablation import MATRIX_SCHEMA

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
MODELS = ("tq", "tg")
CONDITIONS = ("en", "fr", "zh", "parallel")
TARGETS = [f"results/figures/{fig}_{m}.png" for m in MODELS for fig in ("heatmap", "layers")]
TARGETS += [
    "results/figures/ablation_tq.png",
    "results/figures/regions_tq.png",
    "results/tables/findings_tq.csv",
    "results/figures/steering_tq.png",
    "results/tables/cases_tq.html",
    "results/figures/pim_tq.png",
    "results/figures/layer_stages_tq.png",
    "results/figures/finetune_tq.png",
]
# what follows a changed French PLND selection: its layer-stage cells (not the unablated one)
STAGES = {"ablate_task_stage": 4, "collect_layer_stages": 1, "plot_layer_stages": 1}
# what follows a changed selection: its steering jobs (en->fr, en->zh), every cases job
STEERING = {"collect_steering": 1, "plot_steering": 1}
CASES = {"generation_cases": 3, "collect_cases": 1}
# what follows a changed French PLND selection: its enhancement jobs (neurons, random)
FINETUNE = {"finetune": 2, "collect_finetune": 1, "plot_finetune": 1}
METHODS = ("plnd", "lape", "actcount")


def e2e_config(**overrides) -> dict:
    """tests/configs/tiny.yaml (two tiny models, en/fr/zh); keywords replace top-level keys."""
    return load_config("tiny", **overrides)


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake (dry) run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    stats = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        stats[parts[0]] = int(parts[1])
    stats.pop("total", None)
    return stats


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e") / "work"
    proc, out = run_snakemake(workdir, e2e_config(), *TARGETS)
    return workdir, proc, out


def test_run_succeeds(workflow_run):
    _, proc, out = workflow_run
    assert proc.returncode == 0, out[-5000:]


def test_figures_are_png(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    for model in MODELS:
        for fig in ("heatmap", "inhibition", "peaks", "layers", "overlap", "logit_lens"):
            path = workdir / "results" / "figures" / f"{fig}_{model}.png"
            assert path.read_bytes()[:8] == PNG, path
            assert path.stat().st_size > 5000


def test_activation_tables(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    for model in MODELS:
        for cond in CONDITIONS:
            base = workdir / "results" / "activations" / model
            counts = pq.read_table(base / f"{cond}.parquet")
            assert counts.column_names == ["layer", "module", "index", "count", "n_positions"]
            assert counts.num_rows == 2 * 64
            n = counts["n_positions"].to_pylist()
            # generated positions: at most n_prompts x max_new_tokens
            assert 4 <= n[0] <= 4 * 8 and len(set(n)) == 1
            assert max(counts["count"].to_pylist()) <= n[0]
            inhibition = pq.read_table(base / f"{cond}.inhibition.parquet")
            assert inhibition.column_names == [
                "layer",
                "inhibited_share",
                "zero_share",
                "n_positions",
            ]
            assert inhibition.num_rows == 2
            assert all(0 <= s <= 1 for s in inhibition["inhibited_share"].to_pylist())
            info = pq.read_schema(base / f"{cond}.parquet").metadata[b"info"]
            assert f'"condition": "{cond}"'.encode() in info
    corpus = pq.read_table(workdir / "results" / "corpus" / "bundled" / "fr.parquet")
    assert corpus.column_names == ["doc_id", "text", "split", "source", "group_id"]
    assert (workdir / "results" / "models" / "tq" / "training.json").exists()
    assert (workdir / "results" / "models" / "tg" / "config.json").exists()


def test_logs_and_benchmarks(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    res = workdir / "results"
    expected = [
        "prepare_corpus/bundled/en",
        "prepare_corpus/bundled/zh",
        "pretrain_tiny/tq",
        "pretrain_tiny/tg",
        "count_activations/tq/parallel",
        "count_activations/tg/fr",
        "plot_activations/tq",
        "plot_activations/tg",
    ]
    for job in expected:
        assert (res / "logs" / f"{job}.log").exists(), job
        bench = res / "benchmarks" / f"{job}.tsv"
        assert bench.read_text().startswith("s\t"), job
    assert "loss" in (res / "logs" / "pretrain_tiny" / "tq.log").read_text()
    # bench/jobs.py reads these files: one row per rule, tq's jobs only with --model
    report = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "jobs.py"),
            "--root",
            str(res / "benchmarks"),
            "--model",
            "tq",
            "--slowest",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rules = {line.split()[0] for line in report.splitlines()[3:] if line.strip()}
    assert {"pretrain_tiny", "count_activations"} <= rules, report
    assert "tg" not in report and "prepare_corpus" not in report, report


def test_second_run_has_nothing_to_do(workflow_run, capsys):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    t0 = time.perf_counter()
    proc2, out2 = run_snakemake(workdir, e2e_config(), *TARGETS, "-n")
    seconds = time.perf_counter() - t0  # the whole command, Python start-up included
    assert proc2.returncode == 0, out2
    assert "Nothing to be done" in out2
    with capsys.disabled():
        print(f"\ndry run of the finished DAG ({len(TARGETS)} targets): {seconds:.1f} s")
    assert seconds < 5


def test_adding_a_language_reruns_only_that_language(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    cfg = e2e_config(languages=["en", "fr", "zh", "ja"])
    proc2, out2 = run_snakemake(workdir, cfg, *TARGETS, "-n")
    assert proc2.returncode == 0, out2
    per_language = {"count_activations": 2, "plnd_stats": 2, "lape_stats": 2, "logit_lens": 2}
    aggregates = {"plot_activations": 2, "select_neurons": 6, "plot_neurons": 2}
    # the new language is a new target and a new evaluation language of every ablation job
    ablation = {"ablate_neurons": 12, "collect_ablation": 4, "plot_ablation": 1}
    ablation["ablation_base"] = 1  # its unablated perplexity, once for every ablation
    # ... and of every region perturbation (fr, zh stay the region languages)
    regions = {"perturb_regions": 5, "plot_regions": 1, "findings": 1}
    # steering pairs stay en->fr, en->zh: only the neuron methods' jobs follow the
    # selections; the cases gain ja (and the pooled means its statistics)
    steering = {"steer": 6, **STEERING, "unit_stats": 1}
    cases = {"generation_cases": 4, "collect_cases": 1}
    # every fine-tuning job (fr: 4 enhance, 4 forget) and their base evaluate every language
    finetune = {"finetune_base": 1, "finetune": 8, "collect_finetune": 1, "plot_finetune": 1}
    # fr's layer-stage cells ablate its PLND selection, which the new language changes
    # (stage-none, the unablated baseline, and the PiM evaluations stay)
    assert job_stats(out2) == {
        "prepare_corpus": 1,
        **per_language,
        **aggregates,
        **ablation,
        **regions,
        **steering,
        **cases,
        **STAGES,
        **finetune,
    }
    assert "pretrain_tiny" not in out2
    prepared = re.findall(r"output: (results/corpus/\S+)", out2)
    assert prepared == ["results/corpus/bundled/ja.parquet"]
    counted = sorted(re.findall(r"output: results/activations/(\w+)/(\w+)\.parquet", out2))
    assert counted == [("tg", "ja"), ("tq", "ja")]
    for stats in ("plnd", "lape"):
        jobs = sorted(re.findall(rf"output: results/stats/(\w+)/{stats}/(\w+)\.parquet", out2))
        assert jobs == [("tg", "ja"), ("tq", "ja")]


def test_rerun_one_language_reruns_it_and_the_aggregates(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    target = "results/stats/tq/plnd/fr.parquet"
    # targets first: every argument after -R is a file to force
    proc2, out2 = run_snakemake(workdir, e2e_config(), *TARGETS, "-n", "-R", target)
    assert proc2.returncode == 0, out2
    rerun = {"plnd_stats": 1, "select_neurons": 1, "plot_neurons": 1}
    # the French selection changes, so its ablation job and the ablation figure follow
    assert job_stats(out2) == {
        **rerun,
        "ablate_neurons": 3,
        "collect_ablation": 1,
        "plot_ablation": 1,
        "findings": 1,
        "steer": 2,
        **STEERING,
        **CASES,
        **STAGES,
        **FINETUNE,
    }
    assert f"output: {target}" in out2


def test_changing_a_selection_parameter_reruns_only_that_selection(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    cfg = e2e_config()
    cfg["lape"]["top_share"] = 0.1
    proc2, out2 = run_snakemake(workdir, cfg, *TARGETS, "-n")
    assert proc2.returncode == 0, out2
    lape_ablation = {"ablate_neurons": 3, "collect_ablation": 1, "plot_ablation": 1}
    assert job_stats(out2) == {
        "select_neurons": 2,
        "plot_neurons": 2,
        **lape_ablation,
        "findings": 1,
        "steer": 2,
        **STEERING,
        **CASES,
    }
    methods = set(re.findall(r"wildcards: model=\w+, method=(\w+)", out2))
    assert methods == {"lape"}


def test_neuron_tables(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    res = workdir / "results"
    for model in MODELS:
        for method in METHODS:
            for lang in ("en", "fr", "zh"):
                table = pq.read_table(res / "neurons" / model / method / f"{lang}.parquet")
                assert table.column_names[:5] == ["layer", "module", "index", "score", "selected"]
        modules = set(
            pq.read_table(res / "neurons" / model / "plnd" / "fr.parquet")["module"].to_pylist()
        )
        assert modules == ({"mlp"} if model == "tg" else {"mlp", "q", "k", "v", "o"})
        lens = pq.read_table(res / "logit_lens" / model / "zh.parquet")
        assert set(lens["lang_of_token"].to_pylist()) == {"en", "zh", "other"}
        assert (res / "tables" / f"neurons_{model}.csv").exists()
        assert (res / "tables" / f"overlap_{model}.csv").exists()
    ablation = pq.read_table(res / "ablation" / "tq" / "plnd.parquet")
    assert ablation.schema == MATRIX_SCHEMA  # collected parts keep every document's NLL
    rows = ablation.to_pylist()
    assert sum(r["setting"] == "base" for r in rows) == 3
    assert sum(r["setting"] == "selected" for r in rows) == 9
    assert sum(r["setting"] == "random" for r in rows) == 9
    assert all(r["ppl"] > 1 for r in rows)


def test_empty_corpus_fails_clearly(tmp_path):
    for lang in ("en", "fr"):
        (tmp_path / f"{lang}.txt").write_text("too short\ntiny line\nno\n", encoding="utf-8")
    cfg = e2e_config(languages=["en", "fr"])
    cfg["steering"]["pairs"] = [["en", "fr"]]  # tiny.yaml's en->zh needs zh
    cfg["pim"]["directions"] = []  # ... and so does its PiM helper
    cfg["corpora"] = {
        "shortdocs": {"source": "local", "path": str(tmp_path / "{lang}.txt"), "min_chars": 50}
    }
    for spec in [*cfg["models"].values(), *cfg["tasks"].values()]:
        spec["corpus"] = "shortdocs"
    workdir = tmp_path / "work"
    target = "results/corpus/shortdocs/en.parquet"
    proc, out = run_snakemake(workdir, cfg, target, timeout=300)
    assert proc.returncode != 0
    assert "corpus 'shortdocs', language 'en'" in out, out[-3000:]
    assert not (workdir / target).exists()
    assert not list((workdir / "results" / "corpus" / "shortdocs").glob("*.parquet"))


def test_regions_and_findings(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    res = workdir / "results"
    assert (res / "figures" / "regions_tq.png").read_bytes()[:8] == PNG
    for region in ("top", "bottom", "random", "core", "monolingual_fr", "monolingual_zh"):
        table = pq.read_table(res / "regions" / "tq" / f"{region}.parquet")
        assert table.column_names == ["param", "flat_index", "layer", "kind"]
        assert table.num_rows > 0
    perturbation = pq.read_table(res / "ablation" / "tq" / "region.parquet").to_pandas()
    assert set(perturbation.setting) == {"base", "top", "bottom", "random", "monolingual"}
    assert set(perturbation.eval_lang) == {"en", "fr", "zh"}
    findings = pq.read_table(res / "tables" / "findings_tq.parquet").to_pandas()
    # 13 perplexity and selection claims, H-J per neuron method from the steering pairs,
    # K, L (PiM on translation), M, N, O (layer stages) and P-T (fine-tuning)
    assert len(findings) == 32 and findings["value"].notna().sum() >= 29
    intervals = findings[findings["claim_id"].isin(list("HIJKLMNO"))]
    assert intervals["detail"].str.contains("95% CI").all()
    assert (intervals["ci_low"] <= intervals["ci_high"]).all()
    assert set(findings[findings["claim_id"].isin(["K", "L"])]["method"]) == {"pim (translation)"}
    assert (res / "tables" / "findings_tq.csv").read_text().startswith("model,claim_id")


def test_finetune_tables_and_a_region_change_reruns_only_the_frozen(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    res = workdir / "results" / "finetune" / "tq"
    jobs = sorted(p.relative_to(res).as_posix() for p in res.rglob("*.parquet"))
    assert jobs == [
        "base.parquet",
        "enhance/fr_full.parquet",
        "enhance/fr_lora.parquet",
        "enhance/fr_neurons.parquet",
        "enhance/fr_random.parquet",
        "forget/fr_core.parquet",
        "forget/fr_monolingual.parquet",
        "forget/fr_none.parquet",
        "forget/fr_random.parquet",
    ]
    table = pq.read_table(res / "forget" / "fr_core.parquet").to_pandas()
    assert set(table.eval_lang) == {"en", "fr", "zh"} and set(table.phase) == {"before", "after"}
    assert set(table.measure) == {"ppl", "acc_norm"}  # the continuation task in fr
    info = json.loads(pq.read_schema(res / "forget" / "fr_core.parquet").metadata[b"info"])
    assert info["frozen_elements"] > 0 and len(info["losses"]) == 3 and info["n_changed"] > 0
    neurons = json.loads(pq.read_schema(res / "enhance" / "fr_neurons.parquet").metadata[b"info"])
    full = json.loads(pq.read_schema(res / "enhance" / "fr_full.parquet").metadata[b"info"])
    assert 0 < neurons["n_changed"] < full["n_changed"]
    assert not (workdir / "results" / "finetuned").exists()  # keep_weights is off
    summary = (workdir / "results" / "tables" / "finetune_tq.csv").read_text()
    assert summary.startswith("experiment,lang,variant,eval_lang,measure")
    # changing k re-runs the selection and what depends on it, not the scores
    cfg = e2e_config()
    cfg["regions"]["k"] = 0.03
    proc3, out3 = run_snakemake(workdir, cfg, *TARGETS, "-n")
    assert proc3.returncode == 0, out3
    assert job_stats(out3) == {
        "select_regions": 1,
        "perturb_regions": 5,
        "collect_ablation": 1,
        "plot_regions": 1,
        "findings": 1,
        **CASES,
        "finetune": 3,  # forget: core, random and monolingual frozen
        "collect_finetune": 1,
        "plot_finetune": 1,
    }


def test_report_builds_offline(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    report = workdir / "report.zip"
    proc2, out2 = run_snakemake(workdir, e2e_config(), *TARGETS, "--report", str(report))
    assert proc2.returncode == 0, out2[-3000:]
    with zipfile.ZipFile(report) as zf:
        names = zf.namelist()
        assert any(n.endswith("regions_tq.png") for n in names)
        assert any(n.endswith("ablation_tq.png") for n in names)
        assert any(n.endswith("steering_tq.png") for n in names)
        assert any(n.endswith("pim_tq.png") for n in names)
        assert any(n.endswith("finetune_tq.png") for n in names)
        assert any(n.endswith("layer_stages_tq.png") for n in names)
        assert any(n.endswith("cases_tq.html") for n in names)
        assert any(n.endswith("findings_tq.csv") for n in names)
        assert sum(n.endswith(".png") for n in names) >= 10


def test_steering_and_cases(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    res = workdir / "results"
    for method in ("plnd", "lape", "actcount", "diffmean"):
        for pair in ("en_fr", "en_zh"):
            table = pq.read_table(res / "steering" / "tq" / method / f"{pair}.parquet").to_pandas()
            # 2 prompts x (none + settings): neurons 1 + 2 x (1 + 2 x 2), DiffMean 1 + 2 x 3
            assert len(table) == 2 * (11 if method != "diffmean" else 7)
            assert set(table["control"]) == {"none", "selected", "random"}
            assert table["chrf"].between(0, 100).all()
            assert (table["n_new_tokens"] <= 6).all()
    summary = pq.read_table(res / "tables" / "steering_tq.parquet").to_pandas()
    assert summary["combined"].between(0, 1).all()
    assert (summary["success_lo"] <= summary["success"] + 1e-12).all()
    cases = pq.read_table(res / "cases" / "tq" / "fr.parquet").to_pandas()
    assert {"no intervention", "region core (zero)"} <= set(cases["case"])
    assert set(cases["prompt_lang"]) == {"fr", "en"}
    assert "Fudan" in (res / "tables" / "cases_tq.html").read_text(encoding="utf-8")


def test_task_experiments(workflow_run):
    workdir, proc, out = workflow_run
    assert proc.returncode == 0, out[-3000:]
    res = workdir / "results"
    for fig in ("pim", "layer_stages"):
        assert (res / "figures" / f"{fig}_tq.png").read_bytes()[:8] == PNG
    task = pq.read_table(res / "tasks" / "translation" / "fr.parquet").to_pandas()
    assert set(task["split"]) == {"test", "fewshot"} and task["input"].notna().all()
    pim = pq.read_table(res / "tables" / "tasks_tq.parquet").to_pandas()
    assert set(zip(pim["subset"], pim["condition"], strict=True)) == {
        (s, c) for s in ("en-fr", "fr-en") for c in ("monolingual", "pim", "repeat")
    }
    assert (pim["n_items"] == 3).all() and pim["bleu"].notna().all()
    assert pim["inhibited_share"].between(0, 1).all()
    one = pq.read_table(res / "eval" / "tq" / "translation" / "en-fr.pim.parquet").to_pandas()
    assert one["prompt"].str.contains("Chinese: ").all() and one["generation"].notna().all()
    stages = pq.read_table(res / "tables" / "layer_stages_tq.parquet").to_pandas()
    assert set(stages["cell"]) == {"understanding", "task_attention", "task_ffn", "generation"}
    assert set(stages["eval_lang"]) == {"fr", "en"} and set(stages["control"]) == {
        "selected",
        "random",
    }
    assert stages["ppl"].gt(0).all()

"""Config schema (defaults, clear errors) and the workflow's own checks via the CLI."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SCHEMA, load_config, run_snakemake
from snakemake.utils import validate

from workflow_scripts.languages import ISO_639_1, check_language, language_name


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _validate(cfg):
    validate(cfg, str(SCHEMA))
    return cfg


def test_repo_config_is_valid_and_defaults_are_filled(config):
    cfg = _validate(copy.deepcopy(config))
    act = cfg["actcount"]
    assert act["n_prompts"] == config["actcount"]["n_prompts"]  # given values kept
    assert act["select_proportion"] == 0.2
    assert act["max_length"] == 1024 and act["split"] == "eval" and act["chat_template"] == "auto"
    assert act["prompt_prefix"] == 0.5
    corpus = cfg["corpora"]["bundled"]
    assert corpus["min_chars"] == 20 and corpus["max_docs"] == 20000
    assert corpus["eval_fraction"] == 0.1
    for model in cfg["models"].values():
        assert model["dtype"] == "float32"
        assert set(model["resources"]) == {"threads", "mem_mb", "runtime", "gpu"}
        assert model["resources"]["gpu"] == 0  # the default models never ask for a GPU
    assert cfg["models"]["gemma"]["resources"]["mem_mb"] == 8000  # given value kept
    tiny = cfg["models"]["qwen"]["tiny"]
    assert tiny["warmup"] == 0.05 and tiny["weight_decay"] == 0.01
    assert tiny["languages"] == ["en", "de", "fr", "es", "ru", "zh", "vi", "ar", "ko", "ja"]


def test_minimal_config_gets_every_default():
    cfg = _validate(
        {
            "languages": ["en"],
            "corpora": {"c": {"source": "bundled", "path": "x.parquet"}},
            "models": {"m": {"corpus": "c", "path": "org/name"}},
        }
    )
    assert cfg["actcount"]["positions"] == "generated"
    assert cfg["actcount"]["parallel_languages"] == ["en", "de", "fr", "es", "ru", "zh"]
    assert cfg["models"]["m"]["resources"]["threads"] == 8


def _mutated(config, fn):
    cfg = copy.deepcopy(config)
    fn(cfg)
    return cfg


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["actcount"].update(n_prompts="ten"), ["'ten' is not of type 'integer'"]),
        (lambda c: c["actcount"].update(n_prompt=3), ["'n_prompt' was unexpected"]),
        (lambda c: c.update(langauges=["en"]), ["'langauges' was unexpected"]),
        (
            lambda c: c["models"]["gemma"].update(path="google/gemma-3-270m"),
            ["valid under each of", "'gguf'", "'path'"],
        ),
        (lambda c: c["models"]["qwen"].pop("tiny"), ["is not valid under any of"]),
        (lambda c: c["languages"].append("EN"), ["'EN' does not match"]),
        (lambda c: c["languages"].append("eng"), ["'eng' does not match"]),
        (
            lambda c: c["actcount"].update(parallel_languages=["en", "French"]),
            ["'French' does not match"],
        ),
        (lambda c: c["actcount"].update(positions="last"), ["'last' is not one of"]),
        (lambda c: c["corpora"]["bundled"].update(source="s3"), ["'s3' is not one of"]),
        (lambda c: c["models"]["qwen"]["tiny"].update(vocab_size=10), ["10 is less than"]),
        (lambda c: c["languages"].append("en"), ["has non-unique elements"]),
        (lambda c: c.update(placement={"device": "gpu0"}), ["'gpu0' does not match"]),
        (lambda c: c.update(placement={"device_map": "everywhere"}), ["device_map"]),
        (lambda c: c.update(placement={"batch_size": {"plnd": 0}}), ["0 is less than"]),
    ],
)
def test_invalid_config_names_the_culprit(config, mutate, expected):
    cfg = _mutated(config, mutate)
    with pytest.raises(Exception, match="Error validating config file") as err:
        _validate(cfg)
    for text in expected:
        assert text in str(err.value), str(err.value)[:500]


def test_language_codes():
    assert check_language("fr") == "fr"
    assert language_name("zh") == "Chinese"
    assert language_name("nb") == "Norwegian Bokmal"
    assert len(ISO_639_1) > 180
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        check_language("xx")


# ------------------------------------------------------------------------------------ CLI


# the tiny model of tests/configs/tiny_en_fr.yaml (also used by test_translate_workflow)
TINY = load_config("tiny_en_fr")["models"]["tq"]["tiny"]


def _cli_config(**changes):
    """tests/configs/tiny_en_fr.yaml; each keyword replaces that top-level key."""
    return load_config("tiny_en_fr", **changes)


def snakemake_cli(tmp_path: Path, cfg: dict, *args: str) -> subprocess.CompletedProcess:
    """``snakemake -n`` of the repo's Snakefile in a scratch working directory."""
    (tmp_path / "work").mkdir(exist_ok=True)
    proc, _ = run_snakemake(tmp_path / "work", cfg, *args, "-n", timeout=300)
    return proc


def _output(proc):
    return proc.stdout + proc.stderr


def test_cli_valid_config_dry_run(tmp_path):
    proc = snakemake_cli(tmp_path, _cli_config())
    out = _output(proc)
    assert proc.returncode == 0, out
    assert "pretrain_tiny" in out and "count_activations" in out
    assert not (tmp_path / "work" / "results").exists(), "a dry run writes no results"


def test_cli_unknown_language(tmp_path):
    proc = snakemake_cli(tmp_path, _cli_config(languages=["en", "xx"]))
    assert proc.returncode != 0
    assert "unknown language code 'xx'" in _output(proc)


def test_cli_unknown_parallel_language(tmp_path):
    proc = snakemake_cli(tmp_path, _cli_config(actcount={"parallel_languages": ["en", "qq"]}))
    assert proc.returncode != 0
    assert "'qq'" in _output(proc)


def test_cli_schema_error(tmp_path):
    proc = snakemake_cli(tmp_path, _cli_config(actcount={"n_prompts": "ten"}))
    assert proc.returncode != 0
    out = _output(proc)
    assert "'ten' is not of type 'integer'" in out and "n_prompts" in out


def test_cli_unknown_model_in_target(tmp_path):
    proc = snakemake_cli(tmp_path, _cli_config(), "results/figures/heatmap_nope.png")
    assert proc.returncode != 0
    assert "unknown model 'nope'" in _output(proc)


def test_cli_missing_model_path(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    models = {
        "tq": {"corpus": "bundled", "tiny": dict(TINY)},
        "ext": {"corpus": "bundled", "path": missing},
    }
    proc = snakemake_cli(tmp_path, _cli_config(models=models))
    assert proc.returncode != 0
    assert missing in _output(proc)


def test_cli_model_with_unknown_corpus(tmp_path):
    models = {"tq": {"corpus": "wiki", "tiny": dict(TINY)}}
    proc = snakemake_cli(tmp_path, _cli_config(models=models))
    assert proc.returncode != 0
    assert "corpus 'wiki' is not a key under corpora" in _output(proc)


def test_per_model_placement_is_validated_merged(config):
    from workflow_scripts.config import check_cross_fields

    cfg = _mutated(config, lambda c: c["models"]["qwen"].update(placement={"device": "tpu"}))
    _validate(cfg)  # the per-model section is free-form for the schema...
    with pytest.raises(ValueError, match=r"models\.qwen\.placement device"):
        check_cross_fields(cfg)  # ...and checked merged with the global one


def test_paper_config_merges_and_validates(config):
    """config/paper.yaml over config.yaml (Snakemake's recursive merge) is a valid config
    whose task experiments name the papers' benchmarks."""
    from snakemake.utils import update_config

    from workflow_scripts.config import validate_config

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    cfg = copy.deepcopy(config)
    update_config(cfg, paper)
    validate_config(cfg)
    benchmarks = {spec.get("benchmark") for spec in cfg["tasks"].values()}
    assert {"flores", "xnli", "xquad", "mgsm"} <= benchmarks
    assert cfg["pim"]["tasks"] == ["flores", "xnli"] and cfg["pim"]["k"] == 3
    assert cfg["layer_stages"]["tasks"] == ["xquad", "mgsm"]
    assert cfg["ablation"]["n_docs"] == 200  # the other sections' budgets too


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["finetune"].update(languages=["fr", "pt"]), "'pt' is not one of languages"),
        (lambda c: c["finetune"].update(task="translation"), "is a translation task"),
        (lambda c: c["finetune"].update(task="nope"), "unknown task 'nope'"),
        (
            lambda c: c["models"]["gemma"].update(finetune={"languages": ["fr"]}),
            "finetune.languages is global",
        ),
        (
            lambda c: c["models"]["gemma"].update(finetune={"enhance_lr": -1}),
            r"models\.gemma\.finetune",
        ),
    ],
)
def test_finetune_config_is_checked(config, mutate, expected):
    from workflow_scripts.config import validate_config

    cfg = _mutated(config, mutate)
    with pytest.raises(ValueError, match=expected):
        validate_config(cfg)

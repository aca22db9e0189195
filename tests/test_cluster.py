"""Cluster execution: GPU requests driven by the model's config, and a real SLURM run.

The SLURM tests need a running SLURM (``.ci/start_slurm.sh`` sets up a single node on
this machine; ``.ci/run`` does so in CI). Without one they are skipped with the reason,
except in CI (env ``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, load_config, run_snakemake
from safetensors.torch import load_file
from test_workflow_e2e import job_stats

SLURM_PROFILE = str(REPO / "profiles" / "slurm")
# no accounting database on the test node: job states come from squeue; check soon and
# often (the defaults suit a busy cluster); keep the logs of successful jobs to check them
SLURM_TEST_ARGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "3",
    "--slurm-keep-successful-logs",
]
TARGETS = ["results/figures/heatmap_tq.png", "results/stats/tq/plnd/fr.parquet"]
GPU_MODEL = {
    "corpus": "bundled",
    "path": "Qwen/Qwen2.5-7B",  # a hub id: nothing is downloaded by a dry run or a failed sbatch
    "dtype": "bfloat16",
    "resources": {"gpu": 1, "gpu_model": "a100", "slurm_partition": "gpu", "mem_mb": 40000},
}
CLUSTER_KEYS = ("gpu", "gpu_model", "slurm_partition")
MODEL_RULES = ("plnd_stats", "lape_stats", "ablate_neurons", "ablation_base")  # big model jobs


def tiny_config() -> dict:
    """The tiny qwen2 model (tq) of the end-to-end test, on two languages only
    (tests/configs/tiny_en_fr.yaml)."""
    return load_config("tiny_en_fr")


def job_resources(output: str) -> dict[tuple[str, str], dict[str, str]]:
    """(rule, wildcards) -> resources of every job of a dry run's output."""
    jobs = {}
    for block in output.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M).group(1)
        key = (rule, wildcards.group(1) if wildcards else "")
        jobs[key] = dict(item.split("=", 1) for item in resources.split(", "))
    return jobs


def test_every_rule_declares_what_a_scheduler_needs():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in smk.read_text().split("\nrule ")[1:]:
            name = block.split(":", 1)[0]
            for directive in ("log:", "benchmark:", "threads:", "resources:"):
                assert f"\n    {directive}" in block, f"{smk.name}: rule {name} has no {directive}"
            resources = block.split("\n    resources:", 1)[1].split("\n    params:", 1)[0]
            # a model job's memory and runtime come from model_job_resources() (common.smk)
            shared = "**model_job_resources(" in resources
            assert shared or ("mem_mb=" in resources and "runtime=" in resources), f"rule {name}"


def test_gpu_is_requested_only_for_the_model_that_needs_one(tmp_path):
    cfg = tiny_config()
    cfg["models"]["big"] = GPU_MODEL
    targets = ["results/stats/big/plnd/fr.parquet", "results/ablation/big/lape/en.parquet"]
    targets += ["results/stats/tq/plnd/fr.parquet", "results/ablation/tq/lape/en.parquet"]
    proc, out = run_snakemake(tmp_path / "work", cfg, *targets, "-n", timeout=300)
    assert proc.returncode == 0, out[-3000:]
    jobs = job_resources(out)
    big = {key: res for key, res in jobs.items() if "model=big" in key[1]}
    assert {rule for rule, _ in big} == {"select_neurons", *MODEL_RULES}
    for (rule, _), res in big.items():
        if rule == "select_neurons":  # reads tables only: no model, no GPU
            assert not set(CLUSTER_KEYS) & set(res), res
        else:
            assert (res["gpu"], res["gpu_model"], res["slurm_partition"]) == ("1", "a100", "gpu")
            assert res["mem_mb"] == "40000"
    tiny = {key: res for key, res in jobs.items() if "model=tq" in key[1]}
    assert {"pretrain_tiny", "plnd_stats", "ablate_neurons"} <= {rule for rule, _ in tiny}
    for res in tiny.values():
        assert not set(CLUSTER_KEYS) & set(res), res


def test_cpu_only_config_requests_no_gpu(tmp_path):
    proc, out = run_snakemake(tmp_path / "work", tiny_config(), *TARGETS, "-n", timeout=300)
    assert proc.returncode == 0, out[-3000:]
    jobs = job_resources(out)
    assert len(jobs) == sum(job_stats(out).values())
    for res in jobs.values():
        assert not set(CLUSTER_KEYS) & set(res), res


# --- a real SLURM -------------------------------------------------------------------


def slurm_problem() -> str | None:
    """Why no SLURM job can run here (None: a node is up)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (no sinfo/sbatch)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    states = proc.stdout.split()
    if proc.returncode or not {"idle", "mix", "alloc"} & set(states):
        return f"no SLURM node is up (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_problem()
    if problem and os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must run the SLURM test (.ci/start_slurm.sh sets it up)")
    if problem:
        pytest.skip(f"{problem}; run .ci/start_slurm.sh (as root) to test on a local SLURM")


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm") / "work"
    t0 = time.time()
    proc, out = run_snakemake(
        workdir, tiny_config(), *TARGETS, "--profile", SLURM_PROFILE, *SLURM_TEST_ARGS
    )
    return workdir, proc, out, time.time() - t0


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local") / "work"
    t0 = time.time()
    proc, out = run_snakemake(workdir, tiny_config(), *TARGETS)
    return workdir, proc, out, time.time() - t0


def submitted(output: str) -> dict[int, int]:
    """Snakemake job id -> SLURM job id, from the submission messages."""
    found = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)
    return {int(job): int(slurm_id) for job, slurm_id in found}


@pytest.mark.slow
def test_jobs_run_through_slurm(slurm_run, capsys):
    workdir, proc, out, seconds = slurm_run
    assert proc.returncode == 0, out[-5000:]
    assert "Using profile" in out and "profiles/slurm" in out
    ids = submitted(out)
    n_jobs = sum(job_stats(out).values())
    assert len(ids) == n_jobs and len(set(ids.values())) == n_jobs, out[-3000:]
    # SLURM knows every job: finished, on the default (CPU) partition, no GPU asked for
    query = ["squeue", "--states=all", "--noheader", "--format=%i|%T|%P|%b"]
    listed = subprocess.run(
        [*query, "--jobs", ",".join(map(str, ids.values()))], capture_output=True, text=True
    ).stdout
    rows = {int(line.split("|")[0]): line.split("|")[1:] for line in listed.split()}
    assert set(rows) == set(ids.values()), listed
    for state, partition, gres in rows.values():
        assert state == "COMPLETED" and partition == "cpu", listed
        assert "gpu" not in gres, listed
    # each job's SLURM log is where the plugin puts it
    logs = {int(p.stem): p for p in (workdir / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(ids.values()) <= set(logs), sorted(logs)
    assert (workdir / "results" / "figures" / "heatmap_tq.png").stat().st_size > 5000
    with capsys.disabled():
        print(
            f"\nSLURM run: {n_jobs} jobs {dict(sorted(job_stats(out).items()))} in "
            f"{seconds:.0f} s; SLURM job ids {sorted(ids.values())}"
        )


def parquet_files(workdir: Path) -> list[Path]:
    return sorted(p.relative_to(workdir) for p in (workdir / "results").rglob("*.parquet"))


@pytest.mark.slow
def test_slurm_outputs_equal_a_local_run(slurm_run, local_run, capsys):
    slurm_dir, proc, out, _ = slurm_run
    assert proc.returncode == 0, out[-3000:]
    local_dir, proc, out, seconds = local_run
    assert proc.returncode == 0, out[-3000:]
    tables = parquet_files(local_dir)
    assert parquet_files(slurm_dir) == tables
    assert len(tables) >= 8
    for rel in tables:
        assert pq.read_table(slurm_dir / rel).equals(pq.read_table(local_dir / rel)), rel
    weights = Path("results/models/tq/model.safetensors")
    slurm_w, local_w = load_file(slurm_dir / weights), load_file(local_dir / weights)
    assert slurm_w.keys() == local_w.keys()
    assert all(torch.equal(slurm_w[k], local_w[k]) for k in slurm_w)
    with capsys.disabled():
        print(f"\nlocal run: {seconds:.0f} s; {len(tables)} Parquet tables and the weights equal")


@pytest.mark.slow
def test_gpu_job_goes_to_the_gpu_partition(slurm_run):
    """The GPU model's job reaches sbatch with its partition and GPU request (the test
    node has neither, so SLURM refuses it, and says so with the sbatch call)."""
    workdir, proc, out, _ = slurm_run
    assert proc.returncode == 0, out[-3000:]
    cfg = tiny_config()
    cfg["models"]["big"] = GPU_MODEL
    target = "results/stats/big/plnd/fr.parquet"  # its corpus exists: one job, plnd_stats
    args = ["--profile", SLURM_PROFILE, *SLURM_TEST_ARGS, "--retries", "0"]
    proc, out = run_snakemake(workdir, cfg, target, *args, timeout=300)
    assert proc.returncode != 0, out[-3000:]
    call = re.search(r"sbatch call:\s+(sbatch .*)", out)
    assert call, out[-3000:]
    assert " -p gpu " in call.group(1) and "--gpus=a100:1" in call.group(1), call.group(1)
    assert "--mem 40000" in call.group(1)

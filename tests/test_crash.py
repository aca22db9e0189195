"""Crash safety: SIGKILL a real ``snakemake`` run in the middle of tiny-model pretraining,
re-run it, and check that nothing corrupt looks finished, that the training resumed from
its checkpoint and that no finished job was redone. Then, on the finished DAG: editing one
language's corpus file re-runs only what depends on that language.

The tiny model is pretrained on the bundled corpus (``tiny.corpus``) while its statistics
come from per-language text files, so editing a text file does not retrain it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BUNDLED, load_config, run_snakemake, snakemake_command
from test_workflow_e2e import job_stats

from workflow_scripts.io import read_parquet

pytestmark = pytest.mark.slow

# tests/configs/crash.yaml: ~30 s of training on one core, a checkpoint every ~4 s
_TINY = load_config("crash")["models"]["tm"]["tiny"]
STEPS, EVERY = _TINY["steps"], _TINY["checkpoint_every"]
TARGET = "results/figures/heatmap_tm.png"
MODEL = Path("results/models/tm")
CHECKPOINT = Path("results/checkpoints/pretrain_tiny/tm/state.pt")
PRETRAIN_LOG = Path("results/logs/pretrain_tiny/tm.log")
KILL_AFTER_STEP = 100  # kill once this checkpoint is saved, mid-way to the next one


def crash_config(texts: Path) -> dict:
    """tests/configs/crash.yaml, its statistics corpus ``texts`` being the per-language text
    files under ``texts`` (written by :func:`write_texts`, edited by a test)."""
    cfg = load_config("crash")
    cfg["corpora"]["texts"] = {"source": "local", "path": str(texts / "{lang}.txt")}
    return cfg


def write_texts(texts: Path) -> None:
    """One document per line: 300 single-line bundled paragraphs per language."""
    table = pq.read_table(BUNDLED, columns=["lang", "text"]).to_pylist()
    texts.mkdir(parents=True)
    for lang in ("en", "fr"):
        lines = [r["text"] for r in table if r["lang"] == lang and "\n" not in r["text"]]
        (texts / f"{lang}.txt").write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")


def checkpoints_saved(log: Path) -> list[tuple[int, datetime]]:
    """(step, time) of every checkpoint the pretraining log reports."""
    if not log.exists():
        return []
    found = re.findall(r"^(\S+ \S+) \S+ INFO checkpoint saved at step (\d+)", log.read_text(), re.M)
    return [(int(step), datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f")) for t, step in found]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL snakemake, its process group and every descendant (the running jobs)."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, alive


def finished_outputs(workdir: Path) -> dict[Path, int]:
    """Every result file that looks finished (no temporary name) -> its mtime in ns."""
    return {
        p.relative_to(workdir): p.stat().st_mtime_ns
        for p in (workdir / "results").rglob("*")
        if p.is_file()
        and ".tmp-" not in str(p)
        and "checkpoints" not in p.parts
        and "logs" not in p.parts
        and "benchmarks" not in p.parts
    }


@pytest.fixture(scope="module")
def crash(tmp_path_factory):
    """Run, SIGKILL mid-pretraining, re-run: everything the tests below look at."""
    root = tmp_path_factory.mktemp("crash")
    workdir, texts = root / "work", root / "texts"
    write_texts(texts)
    cfg = crash_config(texts)
    out_file = root / "killed_run.txt"
    with out_file.open("w") as sink:
        proc = subprocess.Popen(
            snakemake_command(workdir, cfg, TARGET),
            cwd=root,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
        )
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            saved = checkpoints_saved(workdir / PRETRAIN_LOG)
            if saved and saved[-1][0] >= KILL_AFTER_STEP:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"run ended before the kill:\n{out_file.read_text()[-3000:]}"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5 * EVERY / 13)  # about half-way to the next checkpoint (~13 steps/s)
        kill_time = datetime.now()
        kill_tree(proc)
    after_kill = finished_outputs(workdir)
    saved = checkpoints_saved(workdir / PRETRAIN_LOG)
    checkpoint = torch.load(workdir / CHECKPOINT, map_location="cpu", weights_only=False)
    model_dir_after_kill = (workdir / MODEL).exists()
    t0 = time.time()
    unlock, unlock_out = run_snakemake(workdir, cfg, TARGET, "--unlock", timeout=300)
    assert unlock.returncode == 0, unlock_out[-3000:]
    rerun, rerun_out = run_snakemake(workdir, cfg, TARGET)
    return {
        "workdir": workdir,
        "texts": texts,
        "cfg": cfg,
        "killed_output": out_file.read_text(),
        "kill_time": kill_time,
        "saved": saved,
        "checkpoint_step": checkpoint["step"],
        "after_kill": after_kill,
        "model_dir_after_kill": model_dir_after_kill,
        "rerun": rerun,
        "rerun_out": rerun_out,
        "rerun_seconds": time.time() - t0,
    }


def test_nothing_corrupt_looks_finished_after_the_kill(crash):
    workdir = crash["workdir"]
    assert not crash["model_dir_after_kill"], "the killed job's model directory exists"
    assert crash["checkpoint_step"] == crash["saved"][-1][0] >= KILL_AFTER_STEP
    assert crash["after_kill"], "no job finished before the kill"
    for rel in crash["after_kill"]:
        assert rel.suffix == ".parquet", rel  # only the corpus jobs had finished
        read_parquet(workdir / rel)  # readable, not truncated


def test_rerun_resumes_and_redoes_no_finished_job(crash, capsys):
    workdir, out = crash["workdir"], crash["rerun_out"]
    assert crash["rerun"].returncode == 0, out[-5000:]
    stats = job_stats(out)
    assert stats["pretrain_tiny"] == 1
    # no job whose output was finished at the kill (the corpus jobs) ran again
    rerun_outputs = {Path(o) for line in re.findall(r"output: (.*)", out) for o in line.split(", ")}
    assert not rerun_outputs & set(crash["after_kill"]), rerun_outputs
    for rel, mtime in crash["after_kill"].items():
        assert (workdir / rel).stat().st_mtime_ns == mtime, f"{rel} was rewritten"
    log = (workdir / PRETRAIN_LOG).read_text()
    assert "resuming from checkpoint" in log, log[-2000:]
    info = (workdir / MODEL / "training.json").read_text()
    resumed = int(re.search(r'"resumed_at_step": (\d+)', info).group(1))
    assert resumed == crash["checkpoint_step"]
    assert not (workdir / CHECKPOINT).exists()  # cleared once the model is written
    assert (workdir / TARGET).read_bytes()[:4] == b"\x89PNG"
    for rel in finished_outputs(workdir):
        if rel.suffix == ".parquet":
            read_parquet(workdir / rel)
    # work lost: the steps between the last checkpoint and the kill
    (step_a, time_a), (step_b, time_b) = crash["saved"][-2:]
    rate = (step_b - step_a) / (time_b - time_a).total_seconds()
    lost_seconds = (crash["kill_time"] - time_b).total_seconds()
    lost_steps = min(round(lost_seconds * rate), EVERY - 1)
    with capsys.disabled():
        print(
            f"\nkill-and-resume: killed at ~step {resumed + lost_steps} of {STEPS} "
            f"(checkpoint every {EVERY}); resumed at step {resumed}; work lost "
            f"{lost_seconds:.1f} s = ~{lost_steps} steps; jobs finished before the kill: "
            f"{len(crash['after_kill'])}, redone: 0; re-run jobs {dict(sorted(stats.items()))} "
            f"in {crash['rerun_seconds']:.0f} s"
        )


def test_editing_one_language_corpus_reruns_only_its_dependents(crash):
    workdir, cfg = crash["workdir"], crash["cfg"]
    assert crash["rerun"].returncode == 0, crash["rerun_out"][-3000:]
    fr = crash["texts"] / "fr.txt"
    with fr.open("a", encoding="utf-8") as f:
        f.write("Une phrase ajoutée au corpus français pour voir ce qui est recalculé.\n")
    proc, out = run_snakemake(workdir, cfg, TARGET, "-n", timeout=300)
    assert proc.returncode == 0, out[-3000:]
    # the French corpus, its counting job, the figure: not English, not the model
    assert job_stats(out) == {"prepare_corpus": 1, "count_activations": 1, "plot_activations": 1}
    assert re.findall(r"output: (results/corpus/\S+)", out) == ["results/corpus/texts/fr.parquet"]
    assert re.findall(r"output: results/activations/tm/(\w+)\.parquet", out) == ["fr"]

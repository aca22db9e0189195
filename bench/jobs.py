"""Where a workflow run spent its time and memory: every job's Snakemake benchmark file.

    python bench/jobs.py                        # results/benchmarks/ of this checkout
    python bench/jobs.py --model gemma --slowest 10
    python bench/jobs.py --root /tmp/clone/results/benchmarks --markdown

Each rule declares ``benchmark:`` (``results/benchmarks/<rule>/<wildcards>.tsv``), which
Snakemake writes with the job's wall time ``s``, peak resident memory ``max_rss`` (MB) and
CPU time. This prints one row per rule (jobs, total / mean / longest seconds, peak RSS)
and the slowest jobs. ``--model`` keeps the jobs whose first wildcard is that model
(``<rule>/<model>.tsv`` or ``<rule>/<model>/...``). Job seconds add up to more than the
wall clock when jobs run side by side (``--cores 2`` with one-thread jobs): time the run
itself for that.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    rule: str
    name: str  # the benchmark file's path under the rule, without .tsv
    seconds: float
    max_rss_mb: float
    cpu_seconds: float


def read_jobs(root: Path, model: str | None = None) -> list[Job]:
    """Every benchmark file under ``root`` (the last row: the last run of the job)."""
    jobs = []
    for path in sorted(root.rglob("*.tsv")):
        parts = path.relative_to(root).with_suffix("").parts
        if model is not None and (len(parts) < 2 or parts[1] != model):
            continue
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            raise SystemExit(f"{path}: empty benchmark file")
        row = rows[-1]

        def number(key: str, row=row) -> float:
            value = row.get(key, "NA")
            return float(value) if value not in ("", "NA", "-") else float("nan")

        jobs.append(
            Job(
                parts[0],
                "/".join(parts[1:]),
                number("s"),
                number("max_rss"),
                number("cpu_time"),
            )
        )
    return jobs


def rule_rows(jobs: list[Job]) -> list[tuple]:
    """``(rule, jobs, total s, mean s, longest s, peak RSS MB)``, longest total first."""
    by_rule: dict[str, list[Job]] = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job)
    rows = []
    for rule, group in by_rule.items():
        seconds = [j.seconds for j in group]
        rss = max(j.max_rss_mb for j in group)
        rows.append((rule, len(group), sum(seconds), sum(seconds) / len(group), max(seconds), rss))
    return sorted(rows, key=lambda r: -r[2])


def table(header: list[str], rows: list[tuple], markdown: bool) -> str:
    cells = [[f"{c:,.0f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in cells)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("results/benchmarks"))
    parser.add_argument(
        "--model", help="only this model's jobs (results/benchmarks/<rule>/<model>[.tsv|/])"
    )
    parser.add_argument("--slowest", type=int, default=10, help="list this many slowest jobs")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: no benchmark directory (run the workflow first)")
    jobs = read_jobs(args.root, args.model)
    if not jobs:
        raise SystemExit(
            f"{args.root}: no benchmark files" + (f" of model {args.model}" if args.model else "")
        )
    total = sum(j.seconds for j in jobs)
    print(f"{len(jobs)} jobs, {total:,.0f} s of job time ({total / 60:.1f} min)\n")
    header = ["rule", "jobs", "total s", "mean s", "longest s", "peak RSS MB"]
    print(table(header, rule_rows(jobs), args.markdown))
    slow = sorted(jobs, key=lambda j: -j.seconds)[: args.slowest]
    if not slow:
        return
    print()
    rows = [(j.rule, j.name, j.seconds, j.max_rss_mb) for j in slow]
    print(table(["rule", "job", "s", "peak RSS MB"], rows, args.markdown))


if __name__ == "__main__":
    main()

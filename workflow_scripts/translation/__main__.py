"""The translation CLI, outside Snakemake:
``python -m workflow_scripts.translation --config config.yaml --dataset D --lang fr``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import yaml

from workflow_scripts import paths
from workflow_scripts.translation.client import quiet_http_loggers
from workflow_scripts.translation.errors import TranslationError
from workflow_scripts.translation.run import translate_dataset
from workflow_scripts.translation.settings import validate_sections

log = logging.getLogger("workflow_scripts.translation")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workflow_scripts.translation --config config.yaml --dataset D --lang fr``."""
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.translation", description=main.__doc__
    )
    parser.add_argument("--config", required=True, help="a workflow config file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--out", help=f"default {paths.TRANSLATED}")
    parser.add_argument("--report", help="default: next to --out, .report.json")
    parser.add_argument("--cache", help=f"default {paths.TRANSLATION_CACHE}")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    quiet_http_loggers()
    config = yaml.safe_load(Path(args.config).read_text()) or {}
    try:
        validate_sections(config)
    except ValueError as err:
        parser.error(str(err))
    datasets = config.get("datasets") or {}
    if args.dataset not in datasets:
        parser.error(f"unknown dataset {args.dataset!r}: configured are {', '.join(datasets)}")
    job = {"dataset": args.dataset, "lang": args.lang}
    if args.out:
        out = Path(args.out)
        report = args.report or str(out.with_suffix(".report.json"))
    else:
        out = Path(paths.fill(paths.TRANSLATED, **job))
        report = args.report or paths.fill(paths.TRANSLATION_REPORT, **job)
    try:
        translate_dataset(
            args.dataset,
            datasets[args.dataset],
            args.lang,
            config.get("translation") or {},
            out,
            report,
            args.cache or paths.fill(paths.TRANSLATION_CACHE, **job),
            progress=not args.no_progress,
        )
    except (TranslationError, ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

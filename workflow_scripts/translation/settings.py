"""The ``translation`` and ``datasets`` config sections: their schema defaults and checks.

Built on :mod:`workflow_scripts.config` (the schema is the one source of truth).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workflow_scripts.config import schema_defaults, validate_definition


def settings_with_defaults(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``translation`` settings over the schema defaults (nested objects merged)."""
    out = schema_defaults("translation")
    for key, value in (settings or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def dataset_with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A ``datasets`` entry over the schema defaults."""
    return {**schema_defaults("dataset"), **spec}


def validate_sections(config: Mapping[str, Any]) -> None:
    """Check ``translation`` and every ``datasets`` entry against the schema (for the CLI;
    the workflow validates the whole config). ``ValueError``: ``config <section> <where>: ...``."""
    validate_definition("translation", config.get("translation") or {}, "translation")
    for spec in (config.get("datasets") or {}).values():
        validate_definition("dataset", spec, "dataset")

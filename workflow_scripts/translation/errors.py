"""The one error of the translation package (its own module: cache, client and run raise it)."""

from __future__ import annotations


class TranslationError(RuntimeError):
    """A run that cannot go on (bad key, unknown model, budget reached, failed items)."""

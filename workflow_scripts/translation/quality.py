"""Quality columns of a translated table: detected language and length outliers (flagged,
never dropped)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def quality_columns(
    source_texts: Sequence[str],
    texts: Sequence[str],
    target_lang: str,
    languages: Sequence[str],
    bounds: Sequence[float],
) -> dict[str, list[Any]]:
    """``detected_lang``, ``lang_ok``, ``length_ratio``, ``length_outlier`` of translations."""
    from workflow_scripts.langid import TokenLanguageClassifier

    classifier = TokenLanguageClassifier(list(dict.fromkeys([*languages, target_lang])))
    detected = classifier.classify_many(texts)
    ratios = [len(t) / max(1, len(s)) for s, t in zip(source_texts, texts, strict=True)]
    median = statistics.median(ratios) if ratios else 1.0
    lo, hi = bounds
    outlier = [not (lo * median <= r <= hi * median) for r in ratios]
    return {
        "detected_lang": detected,
        "lang_ok": [d == target_lang for d in detected],
        "length_ratio": ratios,
        "length_outlier": outlier,
    }

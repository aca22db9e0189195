"""Prompts for activation counting: monolingual and parallel multilingual (PiM).

Documents are chosen by a hash of their ``doc_id``, not by file position, so
aligned documents (the same ``doc_id`` in several languages, as in the bundled
corpus) come out in the same order in every language: the monolingual
conditions and the parallel condition see the same content where it exists.

Aligned texts come from prepared corpora (``source='corpus'``: one split, by
``doc_id``) or from translated datasets (``source='translated'``:
``results/translated/{dataset}/{lang}.parquet``, by ``id``; the source
language's table is the source itself). Two parallel builders:
:func:`parallel_prompts` (every language's text in order) and
:func:`pim_prompts` (Mu et al.'s PiM: a source text plus k translations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from workflow_scripts.data.corpus import doc_rank, documents
from workflow_scripts.io import read_parquet
from workflow_scripts.languages import language_name

SOURCES = ("corpus", "translated")


def prefix(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text``, cut at a space where the text has spaces.

    Base models asked to continue a whole paragraph often stop at once (EOS);
    given its first part they continue it, as chat models answer a prompt.
    """
    if fraction >= 1:
        return text
    cut = max(1, round(len(text) * fraction))
    space = text.rfind(" ", 0, cut + 1)
    return text[: space if space > 0 else cut].rstrip()


def monolingual_prompts(
    corpus: str | Path,
    n: int,
    split: str = "eval",
    max_chars: int = 400,
    template: str = "{text}",
    prefix_fraction: float = 1.0,
) -> list[str]:
    """``n`` documents of one language (at most ``max_chars`` long), in hash order.

    Each prompt is the first ``prefix_fraction`` of its document (see :func:`prefix`).
    """
    docs = documents(corpus, split, max_chars)
    if not docs:
        raise ValueError(f"{corpus}: no {split} document of at most {max_chars} characters")
    chosen = sorted(docs, key=doc_rank)[:n]
    return [template.format(text=prefix(docs[d], prefix_fraction)) for d in chosen]


def translated_documents(
    path: str | Path, max_chars: int | None = None, skip_flagged: bool = True
) -> dict[str, str]:
    """``id -> text`` of a translated table, optionally only texts of at most ``max_chars``.

    ``skip_flagged`` leaves out rows whose language check failed or whose length
    ratio is an outlier (they stay in the table, flagged, for inspection).
    """
    table = read_parquet(path, ["id", "text", "lang_ok", "length_outlier"])
    if skip_flagged:
        keep = pc.and_(table.column("lang_ok"), pc.invert(table.column("length_outlier")))
        table = table.filter(pc.fill_null(keep, False))
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    return {
        d: t for d, t in zip(ids, texts, strict=True) if max_chars is None or len(t) <= max_chars
    }


def aligned_documents(
    corpora: Mapping[str, str | Path],
    split: str = "eval",
    max_chars: int | None = None,
    source: str = "corpus",
    skip_flagged: bool = True,
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Per language ``id -> text``, and the ids present in every language, in hash order."""
    if source not in SOURCES:
        raise ValueError(f"unknown parallel source {source!r}: use one of {SOURCES}")
    if source == "corpus":
        docs = {lang: documents(path, split, max_chars) for lang, path in corpora.items()}
    else:
        docs = {
            lang: translated_documents(path, max_chars, skip_flagged)
            for lang, path in corpora.items()
        }
    shared = set.intersection(*(set(d) for d in docs.values()))
    if not shared:
        where = f"{split} document" if source == "corpus" else "translated item"
        raise ValueError(
            f"no {where} is aligned across all of {sorted(corpora)} (same id in each "
            "language, within max_prompt_chars): the parallel condition needs parallel data"
        )
    return docs, sorted(shared, key=doc_rank)


def parallel_prompts(
    corpora: Mapping[str, str | Path],
    n: int,
    split: str = "eval",
    max_chars: int = 400,
    template: str = "{items}",
    item_template: str = "{language}: {text}",
    separator: str = "\n",
    prefix_fraction: float = 1.0,
    source: str = "corpus",
    skip_flagged: bool = True,
) -> list[str]:
    """``n`` parallel multilingual prompts: one aligned document in every language of ``corpora``.

    Each prompt is ``template`` with ``{items}`` replaced by the languages'
    ``item_template`` lines joined by ``separator`` (languages in the given
    order). The last language's text is cut to its first ``prefix_fraction``,
    so the model continues it with the other languages' full text as context
    (the monolingual condition of that language gets the same prefix).
    ``source``: ``corpus`` (prepared corpora) or ``translated`` (translated tables).
    """
    docs, shared = aligned_documents(corpora, split, max_chars, source, skip_flagged)
    prompts = []
    last = list(corpora)[-1]
    for doc_id in shared[:n]:
        items = [
            item_template.format(
                language=language_name(lang),
                lang=lang,
                text=prefix(docs[lang][doc_id], prefix_fraction if lang == last else 1.0),
            )
            for lang in corpora
        ]
        prompts.append(template.format(items=separator.join(items)))
    return prompts


PIM_TEMPLATE = "{translations}\n{source_language}: {source}"


def pim_prompt(
    source: str,
    translations: Mapping[str, str] | Sequence[tuple[str, str]],
    source_lang: str,
    template: str = PIM_TEMPLATE,
    item_template: str = "{language}: {text}",
    separator: str = "\n",
) -> str:
    """One PiM prompt (Mu et al.): a source text plus its translations, in a template.

    ``template`` may use ``{translations}`` (the ``item_template`` lines of
    ``translations``, in their order, joined by ``separator``), ``{source}``,
    ``{source_language}`` (English name) and ``{source_lang}`` (code). ``translations``
    may also be ``(lang, text)`` pairs (a language may then repeat: the length control).
    """
    pairs = translations.items() if isinstance(translations, Mapping) else translations
    lines = [
        item_template.format(language=language_name(lang), lang=lang, text=text)
        for lang, text in pairs
    ]
    return template.format(
        translations=separator.join(lines),
        source=source,
        source_language=language_name(source_lang),
        source_lang=source_lang,
    )


def pim_prompts(
    corpora: Mapping[str, str | Path],
    n: int,
    k: int | None = None,
    split: str = "eval",
    max_chars: int = 400,
    template: str = PIM_TEMPLATE,
    item_template: str = "{language}: {text}",
    separator: str = "\n",
    prefix_fraction: float = 1.0,
    source: str = "corpus",
    skip_flagged: bool = True,
) -> list[str]:
    """``n`` PiM prompts: the first language of ``corpora`` is the source, the next ``k``
    (default: all others) its translations, items aligned by id in hash order.

    The source text is cut to its first ``prefix_fraction`` (the model continues
    it with the translations as context, as in :func:`parallel_prompts`).
    """
    langs = list(corpora)
    if len(langs) < 2:
        raise ValueError("a PiM prompt needs a source language and at least one translation")
    k = len(langs) - 1 if k is None else k
    if not 1 <= k <= len(langs) - 1:
        raise ValueError(f"pim_k={k}: choose 1 to {len(langs) - 1} translations for {langs}")
    src, targets = langs[0], langs[1 : 1 + k]
    used = {lang: corpora[lang] for lang in [src, *targets]}
    docs, shared = aligned_documents(used, split, max_chars, source, skip_flagged)
    return [
        pim_prompt(
            prefix(docs[src][doc_id], prefix_fraction),
            {lang: docs[lang][doc_id] for lang in targets},
            src,
            template,
            item_template,
            separator,
        )
        for doc_id in shared[:n]
    ]


def format_prompts(
    tokenizer, prompts: Sequence[str], chat_template: str = "auto", system_prompt: str = ""
) -> tuple[list[str], bool]:
    """Apply the tokenizer's chat template (``auto``: when it has one; ``always``; ``never``).

    Returns the formatted prompts and whether the chat template was used (the
    formatted strings then already contain the special tokens).
    """
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat_template == "always" and not has:
        raise ValueError("chat_template: always, but the tokenizer has no chat template")
    if chat_template == "never" or not has:
        return list(prompts), False
    out = []
    for p in prompts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": p})
        out.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return out, True


def condition_prompts(
    condition: str, corpora: Mapping[str, str], settings: Mapping[str, Any]
) -> list[str]:
    """The prompts of one activation-counting condition (before any chat template).

    A language code: ``n_prompts`` document prefixes of ``corpora[condition]``;
    ``parallel``: the same documents in every language of ``corpora``, concatenated
    (``parallel_builder: concat``) or as a PiM prompt (``pim``).
    """
    s = settings
    if condition != "parallel":
        return monolingual_prompts(
            corpora[condition],
            s["n_prompts"],
            s["split"],
            s["max_prompt_chars"],
            s["prompt_template"],
            prefix_fraction=s["prompt_prefix"],
        )
    common = {
        "n": s["n_prompts"],
        "split": s["split"],
        "max_chars": s["max_prompt_chars"],
        "item_template": s["parallel_item_template"],
        "prefix_fraction": s["prompt_prefix"],
        "source": "translated"
        if s.get("parallel_source", "bundled").startswith("translated:")
        else "corpus",
        "skip_flagged": s.get("parallel_skip_flagged", True),
    }
    if s.get("parallel_builder", "concat") == "pim":
        return pim_prompts(corpora, k=s.get("pim_k"), template=s["pim_template"], **common)
    return parallel_prompts(corpora, template=s["parallel_template"], **common)

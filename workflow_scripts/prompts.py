"""Prompts for activation counting: monolingual and parallel multilingual (PiM).

Documents are chosen by a hash of their ``doc_id``, not by file position, so
aligned documents (the same ``doc_id`` in several languages, as in the bundled
corpus) come out in the same order in every language: the monolingual
conditions and the parallel condition see the same content where it exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .corpus import doc_rank, documents
from .languages import language_name


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


def parallel_prompts(
    corpora: Mapping[str, str | Path],
    n: int,
    split: str = "eval",
    max_chars: int = 400,
    template: str = "{items}",
    item_template: str = "{language}: {text}",
    separator: str = "\n",
    prefix_fraction: float = 1.0,
) -> list[str]:
    """``n`` parallel multilingual prompts: one aligned document in every language of ``corpora``.

    Each prompt is ``template`` with ``{items}`` replaced by the languages'
    ``item_template`` lines joined by ``separator`` (languages in the given
    order). The last language's text is cut to its first ``prefix_fraction``,
    so the model continues it with the other languages' full text as context
    (the monolingual condition of that language gets the same prefix).
    """
    docs = {lang: documents(path, split, max_chars) for lang, path in corpora.items()}
    shared = set.intersection(*(set(d) for d in docs.values()))
    if not shared:
        raise ValueError(
            f"no {split} document is aligned across all of {sorted(corpora)} "
            "(same doc_id in each language): the parallel condition needs parallel data"
        )
    prompts = []
    for doc_id in sorted(shared, key=doc_rank)[:n]:
        last = list(corpora)[-1]
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

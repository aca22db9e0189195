"""Prompt construction: prefixes, hash order, alignment across languages, chat templates."""

from __future__ import annotations

import copy
import hashlib
import random

import pytest

from workflow_scripts.data.prompts import (
    format_prompts,
    monolingual_prompts,
    parallel_prompts,
    prefix,
)

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _hash_order(ids):
    return sorted(ids, key=lambda d: hashlib.blake2b(d.encode(), digest_size=8).digest())


def _docs(lang, ids, split="eval"):
    return [
        {"doc_id": d, "text": f"{lang} text of {d} with some more words", "split": split}
        for d in ids
    ]


# --------------------------------------------------------------------------------- prefix


@pytest.mark.parametrize(
    ("text", "fraction", "expected"),
    [
        ("one two three four", 1.0, "one two three four"),
        ("one two three four", 1.5, "one two three four"),
        ("one two three four", 0.5, "one two"),  # cut 9 -> last space at 7
        ("one two three four", 0.3, "one"),
        ("abcdefghij", 0.5, "abcde"),  # no space: cut at the character
        ("猫坐在垫子上看书", 0.25, "猫坐"),
        ("a b", 0.01, "a"),  # at least one character
        ("word  next", 0.6, "word"),  # trailing spaces stripped
    ],
)
def test_prefix(text, fraction, expected):
    assert prefix(text, fraction) == expected


def test_prefix_is_a_prefix():
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta".split()
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        f = rng.uniform(0.05, 0.99)
        p = prefix(text, f)
        assert text.startswith(p) and 0 < len(p) <= len(text)
        assert len(p) <= max(1, round(len(text) * f))


# --------------------------------------------------------------------------- monolingual


def test_monolingual_hash_order_and_deterministic(corpus_writer):
    ids = [f"doc{i}" for i in range(30)]
    path = corpus_writer("en", _docs("en", ids) + _docs("en", ["t1", "t2"], split="train"))
    got = monolingual_prompts(path, 5)
    assert got == [f"en text of {d} with some more words" for d in _hash_order(ids)[:5]]
    assert got == monolingual_prompts(path, 5)
    shuffled = _docs("en", ids)
    random.Random(1).shuffle(shuffled)
    path2 = corpus_writer("en_shuffled", shuffled)
    assert monolingual_prompts(path2, 5) == got, "file order does not matter"
    # n larger than available: all eval docs, train docs never used
    everything = monolingual_prompts(path, 100)
    assert len(everything) == 30 and not any("t1" in p for p in everything)
    assert monolingual_prompts(path, 2, split="train") == [
        f"en text of {d} with some more words" for d in _hash_order(["t1", "t2"])
    ]


def test_monolingual_template_prefix_and_max_chars(corpus_writer):
    docs = [
        {"doc_id": "short", "text": "aaa bbb ccc ddd"},
        {"doc_id": "long", "text": "x " * 300},
    ]
    path = corpus_writer("fr", docs)
    got = monolingual_prompts(path, 5, max_chars=100, template="<<{text}>>", prefix_fraction=0.5)
    assert got == ["<<aaa bbb>>"]
    with pytest.raises(ValueError, match="no eval document of at most 3 characters"):
        monolingual_prompts(path, 5, max_chars=3)


def test_aligned_documents_chosen_consistently(corpus_writer):
    ids = [f"item{i}" for i in range(40)]
    en = corpus_writer("en", _docs("en", ids))
    # fr lacks some items and has extra ones; order in the file differs
    fr_ids = [d for d in ids if not d.endswith("3")] + ["fr_only_1", "fr_only_2"]
    fr = corpus_writer("fr", _docs("fr", fr_ids[::-1]))
    n = 12
    en_ids = [p.split(" ")[3] for p in monolingual_prompts(en, n)]
    fr_got = [p.split(" ")[3] for p in monolingual_prompts(fr, n)]
    common_en = [d for d in en_ids if d in fr_ids]
    common_fr = [d for d in fr_got if d in ids]
    k = min(len(common_en), len(common_fr))
    assert k >= 5
    assert common_en[:k] == common_fr[:k], "shared documents come in the same order"


# ------------------------------------------------------------------------------ parallel


def test_parallel_prompts(corpus_writer):
    shared = [f"s{i}" for i in range(6)]
    corpora = {
        "de": corpus_writer("de", _docs("de", [*shared, "de_only"])),
        "zh": corpus_writer("zh", _docs("zh", [*shared, "zh_only"])),
        "en": corpus_writer("en", _docs("en", [*shared, "x1", "x2"])),
    }
    got = parallel_prompts(
        corpora,
        4,
        template="Translate:\n{items}\nEND",
        item_template="[{lang}] {language}: {text}",
        prefix_fraction=0.5,
    )
    assert len(got) == 4
    for prompt, d in zip(got, _hash_order(shared)[:4], strict=True):
        lines = prompt.split("\n")
        assert lines[0] == "Translate:" and lines[-1] == "END"
        assert lines[1] == f"[de] German: de text of {d} with some more words"
        assert lines[2] == f"[zh] Chinese: zh text of {d} with some more words"
        full = f"en text of {d} with some more words"
        assert lines[3] == f"[en] English: {prefix(full, 0.5)}", "only the last language is cut"
        assert lines[3] != f"[en] English: {full}"
    all_prompts = parallel_prompts(corpora, 100)
    assert len(all_prompts) == len(shared), "only documents present in every language"
    assert not any("only" in p or "x1" in p for p in all_prompts)
    assert all_prompts[0].splitlines()[0] == "German: de text of " + _hash_order(shared)[0] + (
        " with some more words"
    )


def test_parallel_order_of_languages_follows_mapping(corpus_writer):
    corpora = {
        "fr": corpus_writer("fr", _docs("fr", ["a", "b"])),
        "en": corpus_writer("en", _docs("en", ["a", "b"])),
    }
    p = parallel_prompts(corpora, 1, separator=" | ")[0]
    assert p.startswith("French: fr text") and " | English: en text" in p
    rev = parallel_prompts(dict(reversed(list(corpora.items()))), 1, separator=" | ")[0]
    assert rev.startswith("English: en text")


def test_parallel_nothing_aligned(corpus_writer):
    corpora = {
        "en": corpus_writer("en", _docs("en", ["a", "b"])),
        "fr": corpus_writer("fr", _docs("fr", ["c", "d"])),
    }
    with pytest.raises(
        ValueError, match=r"no eval document is aligned across all of \['en', 'fr'\]"
    ):
        parallel_prompts(corpora, 3)


# ---------------------------------------------------------------------------- chat format


def test_format_prompts_without_chat_template(tiny_tokenizer):
    assert tiny_tokenizer.chat_template is None
    out, chat = format_prompts(tiny_tokenizer, ["a", "b"])
    assert out == ["a", "b"] and chat is False
    out, chat = format_prompts(tiny_tokenizer, ("a",), "never")
    assert out == ["a"] and chat is False
    with pytest.raises(ValueError, match="no chat template"):
        format_prompts(tiny_tokenizer, ["a"], "always")


def test_format_prompts_with_chat_template(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = CHAT
    out, chat = format_prompts(tok, ["bonjour", "hello"])
    assert chat is True
    assert out == ["<|user|>bonjour\n<|assistant|>", "<|user|>hello\n<|assistant|>"]
    out, chat = format_prompts(tok, ["hi"], "always", system_prompt="Be brief.")
    assert chat is True
    assert out == ["<|system|>Be brief.\n<|user|>hi\n<|assistant|>"]
    out, chat = format_prompts(tok, ["hi"], "never", system_prompt="Be brief.")
    assert out == ["hi"] and chat is False

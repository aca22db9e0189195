"""Task metrics through the field's libraries (docs/methods.md, "Task evaluation").

- translation: sacrebleu's BLEU and chrF, per item (sentence scores, for bootstrap
  intervals over items; sentence chrF is :func:`~workflow_scripts.evaluation.generation.chrf`)
  and over the corpus (the numbers papers report);
- choice: accuracy of the option with the highest log-likelihood (``acc``) and per
  byte (``acc_norm``), as lm-evaluation-harness;
- math (MGSM): exact match of the last number in the generation;
- qa (XQuAD): exact match and token F1 after SQuAD's normalisation.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def bleu_tokenizer(lang: str) -> str:
    """sacrebleu's tokenizer for a target language: ``zh`` for Chinese, characters for
    Japanese and Korean, ``13a`` otherwise."""
    return {"zh": "zh", "ja": "char", "ko": "char"}.get(lang, "13a")


def sentence_bleu(hypothesis: str, reference: str, target_lang: str = "") -> float:
    """sacrebleu sentence BLEU (0-100; effective order, sacrebleu's default smoothing)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize=bleu_tokenizer(target_lang), effective_order=True)
    return float(bleu.sentence_score(hypothesis, [reference]).score)


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[str], target_lang: str = ""
) -> dict[str, float]:
    """Corpus BLEU (tokenizer :func:`bleu_tokenizer`) and chrF, sacrebleu."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize=bleu_tokenizer(target_lang))
    refs = [list(references)]
    return {
        "bleu": float(bleu.corpus_score(list(hypotheses), refs).score),
        "chrf": float(CHRF().corpus_score(list(hypotheses), refs).score),
    }


def last_number(text: str) -> str | None:
    """The last number in ``text``, normalised (thousands separators dropped, ``18.0`` ->
    ``18``), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def number_match(generation: str, reference: str) -> float:
    """1.0 if the generation's last number equals the reference number, else 0.0."""
    return float(last_number(generation) == last_number(reference))


def _squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def qa_exact_match(generation: str, reference: str) -> float:
    """SQuAD exact match after normalisation (lower case, no punctuation or articles)."""
    return float(_squad_tokens(generation) == _squad_tokens(reference))


def qa_f1(generation: str, reference: str) -> float:
    """SQuAD token F1 after the same normalisation."""
    hyp, ref = _squad_tokens(generation), _squad_tokens(reference)
    common = sum((Counter(hyp) & Counter(ref)).values())
    if not hyp or not ref or common == 0:
        return float(hyp == ref)
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def choice_correct(loglik: Sequence[float], label: int) -> float:
    """1.0 if ``label`` has the highest log-likelihood (first index on ties)."""
    best = max(range(len(loglik)), key=lambda i: (loglik[i], -i))
    return float(best == label)

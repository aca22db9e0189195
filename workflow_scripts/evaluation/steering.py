"""Output-language steering: push generations from a source to a target language
(docs/methods.md, "Output-language steering and generation scoring").

Prompts are the first half of eval-split source-language documents that have an aligned
target-language document (same ``doc_id``); each prompt is greedily continued under every
*setting* and the continuation scored:

- ``none``: no intervention (the reference every setting is compared with);
- neuron methods: ``deactivate`` (the source's units zeroed), ``activate`` (the target's
  units ``set`` to ``strength`` x their target-language statistic), ``both`` (the two
  together; a unit selected for both languages is only activated);
- ``diffmean``: ``steer`` (``strength`` x ``mu_l(target) - mu_l(source)`` added after
  each steered layer l).

Each setting also runs as an equal-size ``random`` control (``control`` column): random
units of the same (layer, module) strata (seeds ``seed, seed + 1, ...``), or for
DiffMean a random direction of the same norm per layer. Scores per generation: the
identified language (``lang_success`` when it is the target), chrF against the aligned
target document's second half (``chrf``) and the source's own second half
(``chrf_source``), the continuation's perplexity under the unmodified model (``ppl``),
and ``degenerate`` (:mod:`workflow_scripts.evaluation.generation`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from workflow_scripts.data.corpus import doc_rank, documents
from workflow_scripts.data.prompts import prefix
from workflow_scripts.evaluation.ablation import all_units, random_like
from workflow_scripts.evaluation.bootstrap import bootstrap_interval
from workflow_scripts.evaluation.generation import (
    chrf,
    continuation_nll,
    degenerate,
    greedy_continuations,
    language_of,
)
from workflow_scripts.evaluation.interventions import (
    Intervention,
    Unit,
    dense_only,
    intervened,
    steered,
    validate_units,
)

log = logging.getLogger(__name__)

NEURON_SETTINGS = ("deactivate", "activate", "both")
STEER_METHOD = "diffmean"
COLUMNS = ["doc_id", "prompt", "setting", "control", "strength", "seed", "n_units"]
COLUMNS += ["generation", "gen_lang", "lang_success", "still_source", "chrf", "chrf_source"]
COLUMNS += ["ppl", "degenerate", "n_new_tokens"]


@dataclass(frozen=True)
class Prompt:
    doc_id: str
    text: str  # the source document's first half
    source_rest: str  # the source document's second half
    target_rest: str  # the aligned target document's second half


def aligned_prompts(
    source: str | Path,
    target: str | Path,
    n: int,
    split: str = "eval",
    max_chars: int = 600,
    fraction: float = 0.5,
) -> list[Prompt]:
    """``n`` source documents with an aligned target document, in hash order (the same
    documents for every method and target)."""
    src, tgt = documents(source, split, max_chars), documents(target, split)
    common = sorted(set(src) & set(tgt), key=doc_rank)[:n]
    if not common:
        raise ValueError(
            f"steering: {source} and {target} share no {split} document (doc_id) of at most "
            f"{max_chars} characters: the corpus must be parallel"
        )
    out = []
    for d in common:
        head = prefix(src[d], fraction)
        out.append(Prompt(d, head, src[d][len(head) :].strip(), _rest(tgt[d], fraction)))
    return out


def _rest(text: str, fraction: float) -> str:
    return text[len(prefix(text, fraction)) :].strip()


@dataclass
class Setting:
    setting: str
    control: str  # none | selected | random
    strength: float
    seed: int
    n_units: int
    context: Callable[[slice | None], contextlib.AbstractContextManager]  # rows -> context


def neuron_settings(
    model: nn.Module,
    source_units: Sequence[Unit],
    target_units: Sequence[Unit],
    target_values: Mapping[Unit, float],
    strengths: Sequence[float],
    statistic: str = "mean",
    n_random: int = 1,
    seed: int = 0,
) -> list[Setting]:
    """The settings of a neuron method: deactivate / activate / both, selected and random."""
    # settings run side by side on rows of one batch: dense units only (mixture-of-experts
    # models: the expert neurons of a selection are left out, with a warning)
    target_units = sorted(set(dense_only(target_units, "steering (target)")))
    source_units = sorted(set(dense_only(source_units, "steering (source)")) - set(target_units))
    validate_units(model, [*source_units, *target_units])
    used = sorted({m for _, m, _ in [*source_units, *target_units]})
    candidates = all_units(model, used) if used else []
    draws = [("selected", -1, source_units, target_units)]
    for r in range(n_random):
        # disjoint like the selection: the random source is drawn outside the random target
        tgt = random_like(target_units, candidates, seed + r) if target_units else []
        taken = set(tgt)
        rest = [u for u in candidates if u not in taken]
        src = random_like(source_units, rest, seed + r) if source_units else []
        draws.append(("random", seed + r, src, tgt))

    def both(src, tgt, act):
        @contextlib.contextmanager
        def ctx(rows: slice | None) -> Iterator[None]:
            with intervened(model, src, "zero", rows=rows):
                with intervened(model, tgt, act, target_values, rows=rows):
                    yield

        return ctx

    out = []
    for control, row_seed, src, tgt in draws:
        out.append(
            Setting(
                "deactivate",
                control,
                0.0,
                row_seed,
                len(src),
                lambda rows, src=src: intervened(model, src, "zero", rows=rows),
            )
        )
        for s in strengths:
            act = Intervention("set", float(s), statistic)
            out.append(
                Setting(
                    "activate",
                    control,
                    float(s),
                    row_seed,
                    len(tgt),
                    lambda rows, tgt=tgt, act=act: intervened(
                        model, tgt, act, target_values, rows=rows
                    ),
                )
            )
            out.append(
                Setting(
                    "both", control, float(s), row_seed, len(src) + len(tgt), both(src, tgt, act)
                )
            )
    return out


def random_directions(directions: Mapping[int, torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """Per layer a Gaussian direction of the same norm (``torch.Generator(seed)``)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for la, d in sorted(directions.items()):
        r = torch.randn(d.shape, generator=gen, dtype=torch.float64, device="cpu")
        out[la] = (r / r.norm() * d.double().norm()).float()
    return out


def steer_settings(
    model: nn.Module,
    directions: Mapping[int, torch.Tensor],
    strengths: Sequence[float],
    n_random: int = 1,
    seed: int = 0,
) -> list[Setting]:
    """DiffMean's settings: ``steer`` at each strength, with the direction and random ones."""
    draws = [("selected", -1, dict(directions))]
    draws += [
        ("random", seed + r, random_directions(directions, seed + r)) for r in range(n_random)
    ]
    return [
        Setting(
            "steer",
            control,
            float(s),
            row_seed,
            len(dirs),
            lambda rows, dirs=dirs, s=s: steered(model, dirs, float(s), rows=rows),
        )
        for control, row_seed, dirs in draws
        for s in strengths
    ]


def _generate_settings(
    model, tokenizer, texts: Sequence[str], settings: Sequence[Setting], gen_kw: dict
) -> list[list[list[int]]]:
    """New ids per setting and prompt. Settings run together, each on its own rows of one
    batch of at most ``batch_size`` rows (prompts x settings; at least one setting per
    call, whose prompts are split if they alone exceed it): the weights are read once per
    step for all of them."""
    batch = gen_kw["batch_size"]
    n = len(texts)
    per_call = max(1, batch // n)
    out: list[list[list[int]]] = []
    for start in range(0, len(settings), per_call):
        group = settings[start : start + per_call]
        if len(group) == 1 and n > batch:  # one setting, prompts in chunks
            with group[0].context(None):
                _, ids = greedy_continuations(model, tokenizer, texts, **gen_kw)
            out.append(ids)
            continue
        with contextlib.ExitStack() as stack:
            for k, st in enumerate(group):
                stack.enter_context(st.context(slice(k * n, (k + 1) * n)))
            kw = {**gen_kw, "batch_size": len(group) * n}
            _, ids = greedy_continuations(model, tokenizer, list(texts) * len(group), **kw)
        out += [ids[k * n : (k + 1) * n] for k in range(len(group))]
    return out


def steering_table(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Prompt],
    settings: Sequence[Setting],
    source: str,
    target: str,
    classifier,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    max_length: int = 256,
    min_letters: int = 5,
) -> pa.Table:
    """Generate every prompt under ``none`` and every setting; one scored row each.

    ``batch_size`` is the most rows (prompts x settings) one generation call runs; a
    setting without units repeats the ``none`` generations."""
    texts = [p.text for p in prompts]
    gen_kw = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "max_length": max_length}
    none = Setting("none", "none", 0.0, -1, 0, lambda rows: contextlib.nullcontext())
    active = [none] + [st for st in settings if st.n_units > 0]
    for st in settings:
        if st.n_units == 0:
            log.warning(
                "steering: %s (%s) has no units; its rows repeat none", st.setting, st.control
            )
    generated = dict(
        zip(
            map(id, active),
            _generate_settings(model, tokenizer, texts, active, gen_kw),
            strict=True,
        )
    )
    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    prompt_ids = [list(e) for e in enc]
    every = [generated.get(id(st), generated[id(none)]) for st in [none, *settings]]
    flat_ids = [ids for per_setting in every for ids in per_setting]
    # fluency under the unmodified model, every setting's continuations in one pass
    nll = continuation_nll(model, prompt_ids * len(every), flat_ids, max(1, batch_size // 2))
    rows: list[dict] = []
    for k, st in enumerate([none, *settings]):
        new_ids, scored = every[k], nll[k * len(prompts) : (k + 1) * len(prompts)]
        for p, ids, (total, n) in zip(prompts, new_ids, scored, strict=True):
            gen = tokenizer.decode(ids, skip_special_tokens=True).strip()
            lang = language_of(classifier, gen, min_letters)
            rows.append(
                {
                    "doc_id": p.doc_id,
                    "prompt": p.text,
                    "setting": st.setting,
                    "control": st.control,
                    "strength": st.strength,
                    "seed": st.seed,
                    "n_units": st.n_units,
                    "generation": gen,
                    "gen_lang": lang,
                    "lang_success": lang == target,
                    "still_source": lang == source,
                    "chrf": chrf(gen, p.target_rest),
                    "chrf_source": chrf(gen, p.source_rest),
                    "ppl": math.exp(total / n) if n else math.nan,
                    "degenerate": degenerate(ids),
                    "n_new_tokens": len(ids),
                }
            )
        done = rows[-len(prompts) :]
        log.info(
            "steering %s->%s %s %s x%g: success %.2f, chrF %.1f",
            source,
            target,
            st.setting,
            st.control,
            st.strength,
            np.mean([r["lang_success"] for r in done]),
            np.mean([r["chrf"] for r in done]),
        )
    return pa.Table.from_pylist(rows).select(COLUMNS)


# ----------------------------------------------------------------------- summary


def summarize(frames: Mapping[tuple[str, str, str], pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """One row per (method, source, target, setting, control, strength): success share
    (with a bootstrap interval over prompts), relevance (mean chrF), the unsteered chrF,
    chrF against the source, still-source share, median PPL, degenerate share, and the
    combined score: the harmonic mean of success and relevance / the best relevance of
    any setting of that pair (all methods)."""
    parts = []
    for (method, source, target), df in frames.items():
        base = df[df["setting"] == "none"]["chrf"].mean()
        g = df.groupby(["setting", "control", "strength"], sort=True)
        for (setting, control, strength), rows in g:
            lo, hi = bootstrap_interval(rows["lang_success"].astype(float), seed=seed)
            parts.append(
                {
                    "method": method,
                    "source": source,
                    "target": target,
                    "setting": setting,
                    "control": control,
                    "strength": float(strength),
                    "n": len(rows),
                    "n_units": int(rows["n_units"].max()),
                    "success": float(rows["lang_success"].mean()),
                    "success_lo": lo,
                    "success_hi": hi,
                    "still_source": float(rows["still_source"].mean()),
                    "relevance": float(rows["chrf"].mean()),
                    "relevance_none": float(base),
                    "chrf_source": float(rows["chrf_source"].mean()),
                    "ppl": float(rows["ppl"].median()),
                    "degenerate": float(rows["degenerate"].mean()),
                }
            )
    out = pd.DataFrame(parts)
    if out.empty:
        return out
    best = out.groupby(["source", "target"])["relevance"].transform("max")
    rel = np.where(best > 0, out["relevance"] / best.where(best > 0, 1), 0.0)
    s = out["success"].to_numpy()
    out["combined"] = np.where(s + rel > 0, 2 * s * rel / np.where(s + rel > 0, s + rel, 1), 0.0)
    return out


def best_settings(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (method, source, target), the selected (non-random, steered) setting with the
    highest combined score, with the random control's numbers at the same setting."""
    steered_rows = summary[(summary["control"] == "selected")]
    idx = steered_rows.groupby(["method", "source", "target"])["combined"].idxmax()
    best = steered_rows.loc[idx].reset_index(drop=True)
    rnd = (
        summary[summary["control"] == "random"]
        .groupby(["method", "source", "target", "setting", "strength"], as_index=False)[
            ["success", "relevance", "combined"]
        ]
        .mean()
    )
    rnd = rnd.rename(columns={c: f"random_{c}" for c in ("success", "relevance", "combined")})
    return best.merge(rnd, on=["method", "source", "target", "setting", "strength"], how="left")


def steer_layers(model: nn.Module, depths: Sequence[float]) -> list[int]:
    """Decoder layers at relative ``depths`` (``round(depth * (n_layers - 1))``), sorted."""
    from workflow_scripts.models.anatomy import decoder_layers

    n = len(decoder_layers(model))
    return sorted({round(float(d) * (n - 1)) for d in depths})

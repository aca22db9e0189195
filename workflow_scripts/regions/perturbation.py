"""Perturbing a region and measuring perplexity in every language (docs/methods.md, "Regions").

:func:`perturbed` zeroes, adds noise to or rescales a region's elements and restores
them exactly on exit; :func:`perturbation_table` measures every evaluation language
with and without the perturbation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import torch
from torch import nn

from workflow_scripts.evaluation.ablation import MatrixRows, base_perplexities
from workflow_scripts.evaluation.perplexity import PerplexityResult, perplexity
from workflow_scripts.models.placement import check_editable
from workflow_scripts.regions.selection import KINDS, region_indices, region_params

log = logging.getLogger(__name__)

PERTURBATIONS = ("zero", "noise", "rescale")


@contextlib.contextmanager
def perturbed(
    model: nn.Module,
    region: Mapping[str, torch.Tensor],
    how: str = "zero",
    scale: float = 1.0,
    seed: int = 0,
) -> Iterator[None]:
    """Perturb the region's elements while the context is active; restore them on exit.

    ``zero`` sets them to 0 (for Gemma's ``x * (1 + w)`` norms that is a scale of 1);
    ``noise`` adds Gaussian noise of std ``scale`` x the tensor's root mean square
    (seeded; the RMS, not the std, so constant norm vectors get noise too);
    ``rescale`` multiplies them by ``scale``.
    """
    if how not in PERTURBATIONS:
        raise ValueError(f"perturb: how must be one of {PERTURBATIONS}, got {how!r}")
    check_editable(model, "region perturbation")
    params = region_params(model, region)
    gen = torch.Generator(device="cpu").manual_seed(seed)  # the same noise on any device
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name in sorted(params):
                flat, idx = params[name].data.view(-1), region[name].to(params[name].device)
                saved.append((flat, idx, flat[idx].clone()))
                if how == "zero":
                    flat[idx] = 0
                elif how == "rescale":
                    flat[idx] *= scale
                else:
                    rms = float(flat.float().square().mean().sqrt()) or 1.0
                    noise = torch.randn(idx.numel(), generator=gen, device="cpu") * (scale * rms)
                    flat[idx] += noise.to(flat.device, flat.dtype)
        yield
    finally:
        with torch.no_grad():
            for flat, idx, values in reversed(saved):
                flat[idx] = values


def perturbation_table(
    model: nn.Module,
    tokenizer,
    region: str,
    table: pa.Table,
    eval_texts: Mapping[str, Sequence[str]],
    how: str = "zero",
    scale: float = 1.0,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    base: Mapping[str, PerplexityResult] | None = None,
    **ppl_kwargs,
) -> pa.Table:
    """Perplexity in every evaluation language with ``region`` perturbed, and without
    (from ``base``, the base jobs' results, where given).

    Rows follow ``ablation.MATRIX_SCHEMA``: one ``base`` row per language, then one
    row with ``setting`` = the region name (``monolingual_L`` gives setting
    ``monolingual`` and target_lang L) and ``n_units`` = elements perturbed.
    """
    indices = region_indices(table, kinds)
    n_units = int(sum(i.numel() for i in indices.values()))
    setting, _, target = region.partition("_")
    rows = MatrixRows()
    base = base_perplexities(model, tokenizer, eval_texts, base, **ppl_kwargs)
    for lang, result in base.items():
        rows.add("base", None, lang, 0, result, result)
    with perturbed(model, indices, how, scale, seed):
        for lang, texts in eval_texts.items():
            result = perplexity(model, tokenizer, texts, **ppl_kwargs)
            rows.add(setting, target or None, lang, n_units, result, base[lang], seed)
            log.info(
                "region %s (%s) on %s: PPL %.4g (base %.4g)",
                region,
                how,
                lang,
                result.ppl,
                base[lang].ppl,
            )
    return rows.table()

"""Layer-wise ranks that follow OpenELM's layer-wise scaling, written as peft ``rank_pattern``/``alpha_pattern``.

Strategies (applied separately to each module kind, e.g. all ``qkv_proj`` of the selected layers; modules outside the
decoder blocks, such as the embedding, keep rank ``r``):

* ``uniform``: every module gets rank ``r``.
* ``proportional``: ``rank_i = round(r * w_i / mean(w))`` where ``w_i`` is the module's layer-dependent width
  (``qkv_proj`` rows, ``out_proj`` inputs, ``proj_1`` rows, ``proj_2`` inputs, a sub-projection's rows). The mean
  rank is ``r`` up to rounding.
* ``budget``: ``rank_i = round(c * w_i)`` with ``c`` chosen so that ``sum_i rank_i * (in_i + out_i)`` equals the
  uniform-``r`` parameter count ``r * sum_i (in_i + out_i)``; equal up to rounding.

Ranks are rounded half up and are at least 1. Alpha follows the rank so that every module keeps the uniform config's
scaling: ``alpha_i = alpha * rank_i / r`` (``alpha * sqrt(rank_i / r)`` with rsLoRA).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

from elmtune.adapters.config import AdapterConfig
from elmtune.adapters.targets import Target


def _round_half_up(value: float) -> int:
    return max(1, math.floor(value + 0.5))


def module_ranks(targets: Sequence[Target], r: int, strategy: str) -> dict[str, int]:
    """Rank of every target module under a strategy.

    Args:
        targets: Resolved targets.
        r: The config's rank.
        strategy: ``uniform``, ``proportional`` or ``budget``.

    Returns:
        Module name -> rank.
    """
    ranks = {t.name: r for t in targets}
    if strategy == "uniform":
        return ranks
    groups: dict[str, list[Target]] = defaultdict(list)
    for t in targets:
        if t.layer is not None:
            groups[t.kind].append(t)
    for group in groups.values():
        if strategy == "proportional":
            mean_width = sum(t.width for t in group) / len(group)
            for t in group:
                ranks[t.name] = _round_half_up(r * t.width / mean_width)
        elif strategy == "budget":
            budget = r * sum(t.in_features + t.out_features for t in group)
            per_unit = sum(t.width * (t.in_features + t.out_features) for t in group)
            for t in group:
                ranks[t.name] = _round_half_up(budget * t.width / per_unit)
        else:
            raise ValueError(f"unknown rank strategy {strategy!r}")
    return ranks


def module_alpha(alpha: float, r: int, rank: int, use_rslora: bool) -> float:
    """Alpha for a module of rank ``rank`` that keeps the scaling of rank ``r`` with ``alpha``."""
    return alpha * math.sqrt(rank / r) if use_rslora else alpha * rank / r


def rank_and_alpha_patterns(targets: Sequence[Target], cfg: AdapterConfig) -> tuple[dict[str, int], dict[str, float]]:
    """The peft ``rank_pattern`` and ``alpha_pattern`` for the modules whose rank differs from ``cfg.r``.

    Keys are the escaped full module names (peft matches them as anchored regexes), so no key can match another
    layer's module.
    """
    ranks = module_ranks(targets, cfg.r, cfg.rank_strategy)
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for name, rank in ranks.items():
        if rank != cfg.r:
            key = re.escape(name)
            rank_pattern[key] = rank
            alpha_pattern[key] = module_alpha(cfg.alpha, cfg.r, rank, cfg.use_rslora)
    return rank_pattern, alpha_pattern


__all__ = ["module_alpha", "module_ranks", "rank_and_alpha_patterns"]

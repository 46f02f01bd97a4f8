"""Self CPU time of a ``torch.profiler`` run, summed by kind of operator (matmul, attention, norms, ...)."""

from __future__ import annotations

from typing import Any

CATEGORIES: dict[str, tuple[str, ...]] = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "attention": ("scaled_dot_product", "_flash_attention", "_efficient_attention"),
    "softmax/loss": ("log_softmax", "softmax", "nll_loss", "cross_entropy", "logsumexp"),
    "norm": ("rms_norm", "aten::rsqrt", "aten::pow", "aten::mean", "native_layer_norm"),
    "optimizer": ("Optimizer.step", "aten::addcmul_", "aten::addcdiv_", "aten::lerp_", "aten::sqrt", "_foreach_"),
    "copy/layout": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::to", "aten::_to_copy"),
    "embedding": ("aten::embedding", "aten::index_select", "aten::index", "aten::gather", "aten::scatter"),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::neg", "aten::sub", "aten::div", "aten::fill_"),
}
"""Category -> substrings of the operator names it takes (the first category that matches wins)."""


def category(name: str) -> str:
    """The category of one operator name (``other`` when none matches)."""
    return next((kind for kind, names in CATEGORIES.items() if any(n in name for n in names)), "other")


def self_ms_by_category(events: Any) -> dict[str, float]:
    """Milliseconds of self CPU time per category over ``prof.key_averages()`` events (``other`` last)."""
    totals = dict.fromkeys([*CATEGORIES, "other"], 0.0)
    for event in events:
        totals[category(event.key)] += event.self_cpu_time_total / 1e3
    return totals

"""The report of a combined adapter (``elmtune merge-adapters``): ``combine_report.json``, report.md, report.html.

``combine_report.json`` records what was combined and how (inputs, their ranks and weights, the method and its
settings) and what came out (each module's rank and its relative deviation from the exact weighted sum of the input
updates). ``report.md`` and the self-contained ``report.html`` are rendered from it alone, so ``elmtune report DIR``
renders them again at any time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elmtune.report_html import Heading, Paragraph, Report, Table, key_value_table, number, write_report

if TYPE_CHECKING:
    from elmtune.merging.adapter import AdapterCheckpoint
    from elmtune.merging.combine import Combination, CombineOptions

COMBINE_REPORT_FILE = "combine_report.json"
_LORA_A_SUFFIXES = ("lora_A.weight", "lora_embedding_A")
_DEVIATION_NOTE = (
    "Relative deviation of a module: ||ΔW - Σ w_i ΔW_i||_F / ||Σ w_i ΔW_i||_F, where ΔW is the combined update and "
    "ΔW_i = s_i B_i A_i the update of input i (0 for cat, the exact sum)."
)


def source_ranks(checkpoint: AdapterCheckpoint) -> list[int]:
    """The distinct LoRA ranks of an input adapter (the row counts of its A factors), ascending."""
    return sorted({int(t.shape[0]) for key, t in checkpoint.tensors.items() if key.endswith(_LORA_A_SUFFIXES)})


def method_settings(options: CombineOptions) -> dict[str, Any]:
    """The settings that apply to ``options.method`` (density, sign election, output rank, seed)."""
    settings: dict[str, Any] = {}
    if options.method in ("ties", "dare_linear", "dare_ties"):
        settings["density"] = options.density
    if options.method in ("ties", "dare_ties"):
        settings["majority_sign"] = options.majority_sign
    if options.method == "svd":
        settings["svd_rank"] = options.svd_rank if options.svd_rank is not None else "largest input rank"
    if options.method.startswith("dare"):
        settings["seed"] = options.seed
    return settings


def combine_record(
    options: CombineOptions,
    sources: Sequence[str],
    checkpoints: Sequence[AdapterCheckpoint],
    combination: Combination,
) -> dict[str, Any]:
    """The content of ``combine_report.json``.

    Args:
        options: How the adapters were combined.
        sources: The input adapter directories, as given.
        checkpoints: The input adapters, in the same order.
        combination: The result.
    """
    deviations = list(combination.deviation.values())
    return {
        "format": "elmtune-combine-report",
        "version": 1,
        "method": options.method,
        "settings": method_settings(options),
        "sources": list(sources),
        "source_ranks": [source_ranks(checkpoint) for checkpoint in checkpoints],
        "weights": list(options.weights or [1.0] * len(sources)),
        "exact_weighted_sum": options.method == "cat",
        "max_relative_deviation": max(deviations),
        "mean_relative_deviation": sum(deviations) / len(deviations),
        "modules": {
            m: {"rank": combination.ranks[m], "relative_deviation": combination.deviation[m]} for m in combination.ranks
        },
    }


def is_combined_dir(directory: Path) -> bool:
    """Whether ``directory`` is a combined adapter (its ``combine_report.json``)."""
    return (Path(directory) / COMBINE_REPORT_FILE).is_file()


def _ranks_text(ranks: Sequence[int]) -> str:
    return "–" if not ranks else ", ".join(str(r) for r in ranks)


def build_combine_report(directory: Path) -> Report:
    """The report of the combined adapter in ``directory`` (from its ``combine_report.json``)."""
    directory = Path(directory)
    stored = json.loads((directory / COMBINE_REPORT_FILE).read_text(encoding="utf-8"))
    modules = stored["modules"]
    out_ranks = sorted({int(entry["rank"]) for entry in modules.values()})
    input_ranks = stored.get("source_ranks") or [[] for _ in stored["sources"]]
    about = [
        ("method", str(stored["method"])),
        *((key, str(value)) for key, value in stored.get("settings", {}).items()),
        ("exact weighted sum", "yes" if stored["exact_weighted_sum"] else "no"),
        ("modules", str(len(modules))),
        ("output ranks", _ranks_text(out_ranks)),
        ("max relative deviation", number(stored["max_relative_deviation"])),
        ("mean relative deviation", number(stored["mean_relative_deviation"])),
    ]
    inputs = tuple(
        (str(source), number(float(weight)), _ranks_text(ranks))
        for source, weight, ranks in zip(stored["sources"], stored["weights"], input_ranks, strict=True)
    )
    per_module = tuple(
        (name, str(entry["rank"]), number(entry["relative_deviation"])) for name, entry in modules.items()
    )
    blocks = (
        Heading("Combination"),
        key_value_table(about),
        Heading("Inputs"),
        Table(("adapter", "weight", "ranks"), inputs),
        Heading("Modules"),
        Paragraph(_DEVIATION_NOTE),
        Table(("module", "rank", "relative deviation"), per_module),
    )
    return Report(f"Combined adapter: {stored['method']} of {len(stored['sources'])} adapter(s)", blocks)


def write_combine_report(directory: Path) -> Path:
    """Write ``report.md`` and ``report.html`` into the combined adapter ``directory``; returns the HTML file."""
    return write_report(build_combine_report(directory), Path(directory))


__all__ = [
    "COMBINE_REPORT_FILE",
    "build_combine_report",
    "combine_record",
    "is_combined_dir",
    "method_settings",
    "source_ranks",
    "write_combine_report",
]

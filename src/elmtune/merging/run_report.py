"""A merge's report: ``report.md`` and a self-contained ``report.html`` in the merged directory, beside README.md.

Rendered from ``merge_report.json`` (the stored :class:`~elmtune.merging.report.MergeReport`), so it can be rendered
again (``elmtune report MERGED_DIR``): what was merged, the merge-check numbers and the timings. It has no charts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elmtune.merging.report import REPORT_FILE
from elmtune.report_html import Block, Heading, Paragraph, Report, key_value_table, number, write_report


def is_merged_dir(directory: Path) -> bool:
    """Whether ``directory`` is a merged checkpoint (its ``merge_report.json``)."""
    return (directory / REPORT_FILE).is_file()


def _check(verification: dict[str, Any] | None) -> list[Block]:
    if verification is None:
        return [Paragraph("The merge check was skipped.")]
    scalars = [(key, value) for key, value in verification.items() if isinstance(value, (int, float, str, bool))]
    nested = [
        (f"{key} {inner}", value)
        for key, part in verification.items()
        if isinstance(part, dict)
        for inner, value in part.items()
        if isinstance(value, (int, float, str, bool))
    ]
    pairs = [(key, number(value) if isinstance(value, float) else str(value)) for key, value in scalars + nested]
    return [key_value_table(pairs)]


def build_merge_report(directory: Path) -> Report:
    """The report of the merge in ``directory``."""
    directory = Path(directory)
    stored = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
    adapter = stored["adapter"]
    about = [
        ("base", str(stored["base"])),
        ("adapter", str(adapter["path"])),
        ("method", str(adapter["method"])),
        ("output dtype", str(stored["dtype"])),
        ("output head", str(stored["embeddings"]["note"])),
        ("changed tensors", str(len(stored["changed_tensors"]))),
        ("low memory", str(stored["low_memory"])),
    ]
    timings = [("merge (s)", number(stored["seconds"]["merge"])), ("total (s)", number(stored["seconds"]["total"]))]
    blocks: list[Block] = [
        Heading("Merge"),
        key_value_table(about),
        Heading("Merge check"),
        *_check(stored.get("verification")),
        Heading("Timings"),
        key_value_table(timings),
    ]
    return Report(f"Merge {directory.resolve().name}", tuple(blocks))


def write_merge_report(directory: Path) -> Path:
    """Write ``report.md`` and ``report.html`` into the merged ``directory``; returns the HTML file."""
    return write_report(build_merge_report(directory), Path(directory))


__all__ = ["build_merge_report", "is_merged_dir", "write_merge_report"]

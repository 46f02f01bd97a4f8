"""An evaluation's report: ``report.md`` and a self-contained ``report.html`` next to its ``results.json``.

Rendered from ``results.json`` only, so it can be rendered again (``elmtune report RESULTS_DIR``): the results table
(base vs tuned and their difference when the evaluation compared two models), one bar chart per task, and timings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from elmtune.report_charts import NO_CHARTS_NOTE, bar_chart, charts_available
from elmtune.report_html import Block, Heading, Image, Paragraph, Report, Table, key_value_table, number, write_report

RESULTS_FILE = "results.json"


def is_results_dir(directory: Path) -> bool:
    """Whether ``directory`` holds an evaluation's ``results.json``."""
    return (directory / RESULTS_FILE).is_file()


def metric_values(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float | None]:
    """``(task, metric) -> value`` of the ``results`` rows of a ``results.json``."""
    return {(row["task"], row["metric"]): row["value"] for row in rows}


def _table(tuned: dict[tuple[str, str], Any], base: dict[tuple[str, str], Any] | None) -> Table:
    if base is None:
        return Table(("task", "metric", "value"), tuple((t, m, number(v)) for (t, m), v in tuned.items()))
    rows = []
    for (task, metric), value in tuned.items():
        before = base.get((task, metric))
        difference = None if value is None or before is None else value - before
        rows.append((task, metric, number(before), number(value), number(difference)))
    return Table(("task", "metric", "base", "tuned", "difference"), tuple(rows))


def _chart_name(task: str) -> str:
    return "report_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", task) + ".png"


def _charts(directory: Path, tuned: dict[tuple[str, str], Any], base: dict[tuple[str, str], Any] | None) -> list[Block]:
    if not charts_available():
        return [Paragraph(NO_CHARTS_NOTE)]
    blocks: list[Block] = []
    for task in dict.fromkeys(task for task, _ in tuned):
        metrics = [m for t, m in tuned if t == task and tuned[(t, m)] is not None]
        if base is not None:
            metrics = [m for m in metrics if base.get((task, m)) is not None]
        if not metrics:
            continue
        groups = [("tuned" if base is not None else "model", [tuned[(task, m)] for m in metrics])]
        if base is not None:
            groups.insert(0, ("base", [base[(task, m)] for m in metrics]))
        name = _chart_name(task)
        bar_chart(metrics, groups, directory / name, title=f"{task}: base vs tuned", ylabel="value")
        blocks.append(Image(name, f"{task}: base vs tuned per metric"))
    return blocks


def _read(directory: Path) -> tuple[dict[str, Any], dict[tuple[str, str], Any], dict[tuple[str, str], Any] | None]:
    payload = json.loads((directory / RESULTS_FILE).read_text(encoding="utf-8"))
    base = metric_values(payload["baseline"]["results"]) if payload.get("baseline") else None
    return payload, metric_values(payload["results"]), base


def results_table(directory: Path) -> Table:
    """The results table of the evaluation in ``directory`` (base, tuned and difference when it compared two)."""
    _, tuned, base = _read(Path(directory))
    return _table(tuned, base)


def build_eval_report(directory: Path) -> Report:
    """The report of the evaluation in ``directory`` (its charts are drawn beside it)."""
    directory = Path(directory)
    payload, tuned, base = _read(directory)
    model = payload.get("model", {})
    about = [
        ("model", str(model.get("name"))),
        ("adapter", str(model.get("adapter"))),
        ("protocol", str(payload.get("protocol"))),
        ("device", str(payload.get("device"))),
        ("created", str(payload.get("created"))),
        ("time (s)", number(payload.get("seconds"))),
    ]
    blocks: list[Block] = [
        Heading("Results"),
        _table(tuned, base),
        Heading("Charts"),
        *_charts(directory, tuned, base),
        Heading("Run"),
        key_value_table(about),
    ]
    return Report(f"Evaluation {directory.resolve().name}", tuple(blocks))


def write_eval_report(directory: Path) -> Path:
    """Write ``report.md`` and ``report.html`` (and the charts) into ``directory``; returns the HTML file."""
    return write_report(build_eval_report(directory), Path(directory))


__all__ = ["build_eval_report", "is_results_dir", "metric_values", "results_table", "write_eval_report"]

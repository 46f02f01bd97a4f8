"""A :class:`~elmtune.build.summary.BuildSummary` as report blocks: tables, a base-vs-tuned chart, and plain text.

The same blocks head the build's ``report.md``/``report.html`` and, as Markdown, end ``elmtune build`` and
``elmtune quickstart`` on the terminal.
"""

from __future__ import annotations

import os
from pathlib import Path

from elmtune.build.summary import BuildSummary
from elmtune.report_charts import bar_chart, charts_available
from elmtune.report_html import Block, Heading, Image, Paragraph, Table, number

SCORES_CHART = "report_base_vs_tuned.png"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _scores(summary: BuildSummary) -> Table:
    rows = []
    for change in summary.scores:
        difference = None if change.base is None or change.tuned is None else change.tuned - change.base
        rows.append(
            (change.task, change.metric, number(change.base), number(change.tuned), number(difference))
            + (f"{change.base_stage or '–'} → {change.tuned_stage}",)
        )
    return Table(("task", "metric", "base", "tuned", "difference", "stages"), tuple(rows))


def _trainings(summary: BuildSummary) -> Table:
    rows = []
    for outcome in summary.trainings:
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in outcome.metrics.items())
        rows.append((outcome.stage, str(outcome.steps), metrics))
    return Table(("stage", "steps", "last logged"), tuple(rows))


def _merges(summary: BuildSummary) -> Table:
    rows = []
    for check in summary.merges:
        verdict = "not checked" if check.passed is None else ("passed" if check.passed else "FAILED")
        diff = "–" if check.max_abs_diff is None else f"{check.max_abs_diff:.2e}"
        rows.append((check.stage, verdict, diff, _percent(check.top1_agreement)))
    return Table(("stage", "check", "max |logit diff|", "top-1 agreement"), tuple(rows))


def scores_chart(summary: BuildSummary, out: Path) -> Path | None:
    """Draw base vs tuned bars per task (the tasks whose base was evaluated) into ``out``; None when none was."""
    paired = [c for c in summary.scores if c.base is not None and c.tuned is not None]
    if not paired or not charts_available():
        return None
    labels = [c.task if len({p.metric for p in paired}) == 1 else f"{c.task} ({c.metric})" for c in paired]
    groups = [("base", [c.base for c in paired]), ("tuned", [c.tuned for c in paired])]
    metric = paired[0].metric if len({c.metric for c in paired}) == 1 else "value"
    drawn = bar_chart(
        labels, groups, out.with_name(f".{out.stem}.new.png"), title="Base vs tuned, per task", ylabel=metric
    )
    if out.is_file() and out.read_bytes() == drawn.read_bytes():  # a re-rendered report leaves an unchanged chart alone
        drawn.unlink()
    else:
        os.replace(drawn, out)
    return out


def summary_blocks(summary: BuildSummary, *, chart_dir: Path | None = None, full_paths: bool = False) -> list[Block]:
    """The summary as report blocks.

    Args:
        summary: The build's summary.
        chart_dir: Draw the base-vs-tuned chart there and show it (the build directory, for its report).
        full_paths: Give each output's path with the build directory (for the terminal) rather than relative to it.
    """
    blocks: list[Block] = []
    if summary.scores:
        blocks += [Heading("Base vs tuned", 3), _scores(summary)]
        if chart_dir is not None and scores_chart(summary, chart_dir / SCORES_CHART) is not None:
            blocks.append(Image(SCORES_CHART, "base vs tuned, per task"))
    if summary.trainings:
        blocks += [Heading("Training", 3), _trainings(summary)]
    if summary.merges:
        blocks += [Heading("Merge check", 3), _merges(summary)]
    if summary.samples:
        rows = tuple((sample.stage, sample.prompt, sample.reply) for sample in summary.samples)
        blocks += [Heading("Sample replies", 3), Table(("stage", "prompt", "reply"), rows)]
    root = summary.build_dir if full_paths else Path()
    where = tuple((name, str(root / output), status) for name, output, status in summary.outputs)
    blocks += [Heading("Outputs", 3), Table(("stage", "output", "status"), where)]
    return blocks or [Paragraph("The build has no finished stage.")]


__all__ = ["SCORES_CHART", "scores_chart", "summary_blocks"]

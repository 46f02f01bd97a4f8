"""A build's report: ``report.md`` and a self-contained ``report.html`` in the build directory.

Rendered from ``build.json`` and the stages' outputs, so it can be rendered again (``elmtune report BUILD_DIR``): the
summary (base vs tuned with its chart, training ends, merge checks, sample replies, outputs), then per stage its
status, time and own report, and the evaluation tables and charts.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from elmtune.build.record import BUILD_FILE, BuildRecord, StageRecord
from elmtune.build.summary import summarize_build
from elmtune.build.summary_report import summary_blocks
from elmtune.evaluation.run_report import results_table
from elmtune.report_html import REPORT_HTML, Block, Heading, Image, Paragraph, Report, Table, number, write_report


def is_build_dir(directory: Path) -> bool:
    """Whether ``directory`` is a build directory (its ``build.json``)."""
    return (directory / BUILD_FILE).is_file()


def _stage_dir(entry: StageRecord) -> str:
    return PurePosixPath(entry.output).parts[0]


def _stages_table(build_dir: Path, record: BuildRecord) -> Table:
    rows = []
    for entry in record.stages.values():
        report = f"{_stage_dir(entry)}/{REPORT_HTML}"
        linked = report if (build_dir / report).is_file() else "–"
        rows.append((entry.name, entry.kind, entry.status, number(entry.seconds), entry.output, linked))
    return Table(("stage", "kind", "status", "time (s)", "output", "report"), tuple(rows))


def _evaluations(build_dir: Path, record: BuildRecord) -> list[Block]:
    blocks: list[Block] = []
    for entry in record.stages.values():
        directory = build_dir / entry.output
        if entry.kind != "eval" or not (directory / "results.json").is_file():
            continue
        blocks += [Heading(f"Evaluation: {entry.name}", 3), results_table(directory)]
        charts = sorted(directory.glob("report_*.png"))
        blocks += [Image(f"{entry.output}/{png.name}", f"{entry.name}: {png.stem[len('report_') :]}") for png in charts]
    return blocks or [Paragraph("The build has no evaluation stage.")]


def build_build_report(build_dir: Path) -> Report:
    """The report of the build in ``build_dir``."""
    build_dir = Path(build_dir)
    record = BuildRecord.load(build_dir)
    if record is None:
        raise FileNotFoundError(build_dir / BUILD_FILE)
    total = sum(entry.seconds or 0.0 for entry in record.stages.values())
    blocks: list[Block] = [
        Paragraph(f"Recipe {record.recipe}, base model {record.model}; stage time in total {total:.1f} s."),
        Heading("Summary"),
        *summary_blocks(summarize_build(build_dir), chart_dir=build_dir),
        Heading("Stages"),
        _stages_table(build_dir, record),
        Heading("Evaluation"),
        *_evaluations(build_dir, record),
    ]
    return Report(f"Build {build_dir.resolve().name}", tuple(blocks))


def write_build_report(build_dir: Path) -> Path:
    """Write ``report.md`` and ``report.html`` into ``build_dir``; returns the HTML file."""
    return write_report(build_build_report(build_dir), Path(build_dir))


__all__ = ["build_build_report", "is_build_dir", "write_build_report"]

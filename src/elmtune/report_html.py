"""Reports people open: a small typed document rendered to Markdown and to self-contained HTML.

A :class:`Report` is a title and a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`Table`,
:class:`Image`). :func:`write_report` renders it twice into a directory: ``report.md`` (images linked by their
relative path) and ``report.html`` (every image inlined as a base64 ``data:`` URI; no external asset, no network).
Every text is escaped for HTML. Plots are drawn with :mod:`elmtune.report_charts` when matplotlib is installed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPORT_MD = "report.md"
REPORT_HTML = "report.html"

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}"
)


@dataclass(frozen=True)
class Heading:
    """A section heading.

    Attributes:
        text: The heading's text.
        level: 2 for a section, 3 for a subsection (the title is level 1).
    """

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text (``code`` marks it as preformatted, e.g. a YAML config)."""

    text: str
    code: bool = False


@dataclass(frozen=True)
class Table:
    """A table of text cells.

    Attributes:
        header: The column names.
        rows: The rows, each as many cells as ``header``.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """A PNG next to the report.

    Attributes:
        path: The file, relative to the report's directory.
        caption: Its alternative text.
    """

    path: str
    caption: str


Block = Heading | Paragraph | Table | Image


@dataclass(frozen=True)
class Report:
    """A report: a title and its blocks, in order."""

    title: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return f"```\n{block.text.rstrip()}\n```" if block.code else block.text
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(c) for c in block.header) + " |"]
        lines.append("|" + "|".join("---" for _ in block.header) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return f"![{block.caption}]({block.path})"


def to_markdown(report: Report) -> str:
    """The report as Markdown (images linked by their relative path)."""
    parts = [f"# {report.title}", *(_md_block(block) for block in report.blocks)]
    return "\n\n".join(parts) + "\n"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_block(block: Block, directory: Path) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<pre>{html.escape(block.text)}</pre>" if block.code else f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    data = base64.b64encode((directory / block.path).read_bytes()).decode("ascii")
    caption = html.escape(block.caption)
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
    )


def to_html(report: Report, directory: Path) -> str:
    """The report as one self-contained HTML page; images are read from ``directory`` and inlined."""
    title = html.escape(report.title)
    body = "\n".join(_html_block(block, directory) for block in report.blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n<h1>{title}</h1>\n{body}\n</body></html>\n"
    )


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def write_report(report: Report, directory: Path) -> Path:
    """Write ``report.md`` and ``report.html`` into ``directory``; returns the HTML file.

    A file whose content would not change is left untouched (so rendering an unchanged build again changes nothing).
    """
    directory = Path(directory)
    _write_if_changed(directory / REPORT_MD, to_markdown(report))
    out = directory / REPORT_HTML
    _write_if_changed(out, to_html(report, directory))
    return out


def key_value_table(pairs: Sequence[tuple[str, str]]) -> Table:
    """A two-column table (``what``, ``value``) of labelled values."""
    return Table(("what", "value"), tuple((label, value) for label, value in pairs))


def number(value: float | None) -> str:
    """A number as a report prints it: exactly as stored (``repr``), or ``–`` when missing."""
    return "–" if value is None else repr(value)


__all__ = [
    "REPORT_HTML",
    "REPORT_MD",
    "Block",
    "Heading",
    "Image",
    "Paragraph",
    "Report",
    "Table",
    "key_value_table",
    "number",
    "to_html",
    "to_markdown",
    "write_report",
]

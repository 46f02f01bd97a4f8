"""The report renderer: one typed document, two renderings; escaped HTML; a report without matplotlib says so."""

from __future__ import annotations

import json
from pathlib import Path

import elmtune.finetune.run_report as run_report
from elmtune.report_charts import NO_CHARTS_NOTE
from elmtune.report_html import Heading, Paragraph, Report, Table, to_html, to_markdown


def test_markdown_and_html_render_the_same_blocks(tmp_path):
    report = Report("T <1>", (Heading("Part"), Paragraph("a < b & c"), Table(("k", "v"), (("x|y", "1"),))))
    assert to_markdown(report) == "# T <1>\n\n## Part\n\na < b & c\n\n| k | v |\n|---|---|\n| x\\|y | 1 |\n"
    html = to_html(report, tmp_path)
    assert "<h1>T &lt;1&gt;</h1>" in html and "<p>a &lt; b &amp; c</p>" in html
    assert "<td>x|y</td><td>1</td>" in html and "a < b" not in html


def test_run_report_without_matplotlib_has_no_images_and_says_so(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("model: tiny\n")
    rows = [{"step": 1, "loss": 2.5, "elapsed_s": 1.0, "peak_memory_mb": 10.0}, {"step": 2, "loss": 2.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(run_report, "charts_available", lambda: False)
    run_report.write_run_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert NO_CHARTS_NOTE in text and "![" not in text
    assert "| final train loss | 2.25 |" in text and "| final adapter | not written |" in text
    assert "<img" not in (tmp_path / "report.html").read_text()
    assert not list(Path(tmp_path).glob("*.png"))

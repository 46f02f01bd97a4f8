"""Reports: every run, evaluation, merge and build of a tiny build leaves report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _md_values(report: Path) -> dict[str, str]:
    """``label -> value`` of every two-column table row of a report.md (parsed independently of the renderer)."""
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", report.read_text(), flags=re.M)
    return dict(rows)


def _assert_self_contained(html: str) -> None:
    sources = re.findall(r'src="([^"]*)"', html)
    assert 'src="http' not in html
    assert all(src.startswith("data:") for src in sources), sources
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert images
    for encoded in images:
        png = base64.b64decode(encoded)
        assert png[:8] == PNG_SIGNATURE
        width, height = struct.unpack(">II", png[16:24])  # IHDR: the chart is 8x4.5 in at 100 dpi
        assert (width, height) == (800, 450)


@pytest.fixture(scope="module")
def build_dir(elmtune, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "build"
    run = elmtune("build", "recipes/build-assistant-tiny.yaml", "-o", str(out))
    assert run.code == 0, run.err
    return out


def test_training_runs_report_their_metrics(build_dir):
    for stage in ("01-sft", "02-dpo"):
        run = build_dir / stage
        _assert_self_contained((run / "report.html").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        values = _md_values(run / "report.md")
        assert float(values["final train loss"]) == [r["loss"] for r in rows if "loss" in r][-1]
        assert float(values["peak memory (MB)"]) == max(r["peak_memory_mb"] for r in rows if "peak_memory_mb" in r)
        assert values["final adapter"] == "final/"
    dpo_rows = [json.loads(line) for line in (build_dir / "02-dpo" / "metrics.jsonl").read_text().splitlines()]
    dpo = _md_values(build_dir / "02-dpo" / "report.md")
    last = [r for r in dpo_rows if "rewards/margins" in r][-1]
    assert float(dpo["final rewards/margins"]) == last["rewards/margins"]
    assert (build_dir / "02-dpo" / "report_rewards.png").read_bytes()[:8] == PNG_SIGNATURE


def test_evaluation_report_has_the_results_table(build_dir):
    directory = build_dir / "04-eval"
    _assert_self_contained((directory / "report.html").read_text())
    payload = json.loads((directory / "results.json").read_text())
    table = re.findall(
        r"^\| (\S+) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", (directory / "report.md").read_text(), re.M
    )
    tuned = {(t, m): v for t, m, _, v, _ in table[1:]}
    assert len(tuned) == len(payload["results"])
    for row in payload["results"]:
        assert float(tuned[(row["task"], row["metric"])]) == row["value"]


def test_merge_report_has_the_check_numbers(build_dir):
    directory = build_dir / "03-merge"
    stored = json.loads((directory / "merge_report.json").read_text())
    values = _md_values(directory / "report.md")
    comparison = stored["verification"]
    assert float(values["max_abs_diff"]) == next(v for k, v in _flat(comparison) if k == "max_abs_diff")
    assert float(values["total (s)"]) == stored["seconds"]["total"]
    html = (directory / "report.html").read_text()
    assert "src=" not in html or all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', html))


def _flat(mapping: dict) -> list[tuple[str, object]]:
    out = []
    for key, value in mapping.items():
        out += _flat(value) if isinstance(value, dict) else [(key, value)]
    return out


def test_build_report_lists_stages_and_samples(build_dir):
    _assert_self_contained((build_dir / "report.html").read_text())
    record = json.loads((build_dir / "build.json").read_text())
    text = (build_dir / "report.md").read_text()
    stages = re.findall(r"^\| (\S+) \| (\S+) \| (\S+) \| ([0-9.]+) \| (\S+) \| (\S+) \|$", text, re.M)
    assert [(s[0], s[2], float(s[3])) for s in stages] == [
        (entry["name"], entry["status"], entry["seconds"]) for entry in record["stages"]
    ]
    assert ("sft", "01-sft/report.html") in {(s[0], s[5]) for s in stages}
    for line in (build_dir / "06-samples" / "replies.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert text.count(f"| samples | {row['prompt']} | {row['reply']} |") == 1  # once, in the summary


def test_report_command_recreates_a_deleted_report(elmtune, build_dir):
    for stage in ("01-sft", "02-dpo", "03-merge", "04-eval", "."):
        report = build_dir / stage / "report.md"
        before = report.read_bytes()
        report.unlink()
        (build_dir / stage / "report.html").unlink()
        run = elmtune("report", str(build_dir / stage))
        assert run.code == 0, run.err
        assert report.read_bytes() == before
        assert (build_dir / stage / "report.html").is_file()


def test_report_command_refuses_other_directories(elmtune, tmp_path):
    run = elmtune("report", str(tmp_path))
    assert run.code == 2
    assert len(run.err.strip().splitlines()) == 1 and "not a training run" in run.err

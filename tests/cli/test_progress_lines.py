"""merge and export print plain progress lines on stderr when it is not a terminal; --no-progress silences them.

The evaluation's lines are checked in test_eval_cli.py.

The tiny jobs here end within the minimum gap between lines, so the gap is set to 0: a line at each tenth.
"""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import elmtune.progress
from elmtune.cli.app import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def line_at_every_tenth(monkeypatch):
    monkeypatch.setattr(elmtune.progress, "MIN_GAP_S", 0.0)


@pytest.fixture(scope="module")
def base(make_tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "base"
    make_tiny().save_pretrained(path)
    return path


def _lines(stderr: str, prefix: str, unit: str) -> list[tuple[int, int]]:
    """(done, total) of every progress line starting with ``prefix``."""
    pattern = re.compile(rf"^{re.escape(prefix)}: (\d+)/(\d+) {unit} \((\d+)%\)")
    found = [pattern.match(line) for line in stderr.splitlines()]
    rows = [(int(m.group(1)), int(m.group(2))) for m in found if m]
    for (done, total), m in zip(rows, (m for m in found if m), strict=True):
        assert int(m.group(3)) == 100 * done // total
    return rows


def _check_tenths(rows: list[tuple[int, int]]) -> None:
    """One line per tenth reached, counts rising, the last at the total."""
    assert rows, "no progress line"
    total = rows[0][1]
    assert [done for done, _ in rows] == sorted({done for done, _ in rows})
    assert rows[-1] == (total, total)
    assert len(rows) == len({10 * done // total for done, _ in rows}) <= 10


def test_merge_prints_progress_lines_and_no_progress_silences_them(base, trained_adapter, tmp_path, one_thread):
    adapter = trained_adapter(base, tmp_path / "lora", r=2, targets=("q", "v"))
    result = runner.invoke(app, ["merge", str(base), str(adapter), "-o", str(tmp_path / "merged"), "--no-verify"])
    assert result.exit_code == 0, result.output
    rows = _lines(result.stderr, "merge", "tensors")
    _check_tenths(rows)
    assert rows[-1][1] == len(_tensor_names(tmp_path / "merged"))
    quiet = runner.invoke(
        app, ["merge", str(base), str(adapter), "-o", str(tmp_path / "m2"), "--no-verify", "--no-progress"]
    )
    assert quiet.exit_code == 0 and not _lines(quiet.stderr, "merge", "tensors"), quiet.stderr


def test_export_prints_progress_lines(base, tmp_path):
    result = runner.invoke(app, ["export", str(base), "-o", str(tmp_path / "m.gguf"), "--outtype", "f32"])
    assert result.exit_code == 0, result.output
    rows = _lines(result.stderr, "export GGUF f32", "tensors")
    _check_tenths(rows)
    tensors = re.search(r"(\d+) tensors \(", result.stdout)
    assert tensors and rows[-1][1] == int(tensors.group(1))


def _tensor_names(directory: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            names += list(handle.keys())
    return names

"""The report of ``elmtune merge-adapters``: report.md and report.html beside the combined adapter, their numbers
equal to ``combine_report.json`` and to the ranks of the tensors written (read with safetensors), rendered again by
``elmtune report``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from elmtune.cli.app import app
from elmtune.merging.combine import CombineOptions, combine_adapters

WEIGHTS = (0.7, -0.4)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, trained_adapter) -> list[Path]:
    """Two LoRA adapters on the tiny preset: rank 4 and rank 2."""
    root = tmp_path_factory.mktemp("combine_inputs")
    return [
        trained_adapter(Path("tiny"), root / "r4", seed=1, base_name="tiny", r=4, alpha=8, dropout=0.0),
        trained_adapter(Path("tiny"), root / "r2", seed=2, base_name="tiny", r=2, alpha=2, dropout=0.0),
    ]


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table of ``markdown``, as rows of cells (header included, separator left out)."""
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not re.fullmatch(r"\|(---\|)+", line):
                current.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def _a_ranks(adapter_dir: Path) -> dict[str, int]:
    """Module -> rank: the row count of each LoRA A factor in the saved tensors."""
    ranks = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as tensors:
        for key in tensors.keys():  # noqa: SIM118 (safe_open is not a dict)
            match = re.fullmatch(r"base_model\.model\.(.+)\.(lora_A\.weight|lora_embedding_A)", key)
            if match:
                ranks[match.group(1)] = tensors.get_slice(key).get_shape()[0]
    return ranks


def test_cat_report_shows_inputs_weights_and_the_summed_ranks(inputs: list[Path], tmp_path: Path) -> None:
    out = combine_adapters(inputs, tmp_path / "cat", CombineOptions(method="cat", weights=WEIGHTS)).path
    stored = json.loads((out / "combine_report.json").read_text())
    markdown = (out / "report.md").read_text()
    about, sources, modules = _tables(markdown)
    about = dict(about[1:])
    assert about["method"] == "cat" and about["exact weighted sum"] == "yes"
    assert float(about["max relative deviation"]) == stored["max_relative_deviation"]
    assert float(about["mean relative deviation"]) == stored["mean_relative_deviation"]
    assert sources == [["adapter", "weight", "ranks"], [str(inputs[0]), "0.7", "4"], [str(inputs[1]), "-0.4", "2"]]
    written = _a_ranks(out)
    assert set(written.values()) == {6}  # cat stacks the factors: 4 + 2
    assert about["modules"] == str(len(written)) and about["output ranks"] == "6"
    assert modules[0] == ["module", "rank", "relative deviation"]
    assert {row[0]: int(row[1]) for row in modules[1:]} == written
    for name, _, deviation in modules[1:]:
        assert float(deviation) == stored["modules"][name]["relative_deviation"]
    page = (out / "report.html").read_text()
    assert "<td>-0.4</td>" in page and page.count("<td>6</td>") == len(written) + 1  # the modules and "output ranks"


def test_svd_report_names_the_rank_and_is_rendered_again(inputs: list[Path], tmp_path: Path) -> None:
    options = CombineOptions(method="svd", weights=WEIGHTS, svd_rank=3)
    out = combine_adapters(inputs, tmp_path / "svd", options).path
    about = dict(_tables((out / "report.md").read_text())[0][1:])
    assert about["svd_rank"] == "3" and about["exact weighted sum"] == "no" and about["output ranks"] == "3"
    assert set(_a_ranks(out).values()) == {3}
    first = (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == first and (out / "report.html").is_file()

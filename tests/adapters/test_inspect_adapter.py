"""``elmtune inspect MODEL --adapter CONFIG_OR_DIR``: per-layer ranks and trainable parameters with totals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn
from typer.testing import CliRunner

from elmtune.adapters import AdapterConfig, AdapterError, apply_adapter, save_adapter
from elmtune.adapters.describe import adapter_report
from elmtune.cli.app import app

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["inspect", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_yaml_config_on_270m(tmp_path: Path) -> None:
    config = tmp_path / "dora.yaml"
    config.write_text("method: dora\ntargets: apple\nrank_strategy: proportional\n")
    out = invoke("270M", "--adapter", str(config))
    assert "adapter" in out and "r qkv_proj" in out and "r proj_2" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert rows["0"].split("│")[2].strip() == "24" and rows["15"].split("│")[2].strip() == "41"  # qkv ranks
    assert "transformer.token_embeddings (r 32)" in out and "1,064,960" in out
    report = adapter_report("270M", config)
    assert f"{report.trainable:,}" in out and f"{report.magnitude:,}" in out
    assert report.magnitude == 158_336  # one magnitude per output row; the embedding stays LoRA


def test_without_the_option_only_the_geometry_is_printed(tmp_path: Path) -> None:
    out = invoke("270M")
    assert "271,527,168" in out and "trainable" not in out


def test_saved_adapter_directory(make_tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    model = apply_adapter(make_tiny(), AdapterConfig(r=4, targets="q,v", layers="2-3", train_norms=True))
    save_adapter(model, tmp_path, base_name="tiny")
    out = invoke("tiny", "--adapter", str(tmp_path))
    assert "r q" in out and "r v" in out and "norms" in out
    report = adapter_report("tiny", tmp_path)
    assert {m.layer for m in report.modules if m.rank} == {2, 3}
    assert f"{report.trainable:,}" in out
    result = runner.invoke(app, ["inspect", "270M", "--adapter", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, AdapterError)
    assert "trained on a different base model" in str(result.exception)

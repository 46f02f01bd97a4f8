"""``elmtune inspect MODEL --adapter CONFIG_OR_DIR``: per-layer ranks and trainable parameters with totals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from elmtune.adapters import AdapterConfig, AdapterError, apply_adapter, save_adapter
from elmtune.cli.app import app
from elmtune.models import OpenELMConfig

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["inspect", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def table_rows(out: str) -> dict[str, list[str]]:
    """The adapter table's rows (the last table printed): first cell -> the other cells."""
    adapter_table = out[out.rindex("adapter ") :]
    rows = [line.split("│")[1:-1] for line in adapter_table.splitlines() if line.startswith("│")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def number(cell: str) -> int:
    return int(cell.split()[0].replace(",", ""))


def test_yaml_config_on_270m(tmp_path: Path) -> None:
    config = tmp_path / "dora.yaml"
    config.write_text("method: dora\ntargets: apple\nrank_strategy: proportional\n")
    out = invoke("270M", "--adapter", str(config))
    assert "r qkv_proj" in out and "r out_proj" in out and "r proj_1" in out and "r proj_2" in out
    rows = table_rows(out)
    geometry = OpenELMConfig.from_preset("270M").geometry
    d, vocab = 1280, 32000
    expected_total = magnitudes = 0
    for g in geometry.layers:
        r_qkv, r_out, r_proj_1, r_proj_2, trainable = rows[str(g.index)]
        # (in, out) of each adapted Linear; DoRA: r (in + out) low-rank factors plus one magnitude per output row
        shapes = [
            (int(r_qkv), d, g.q_rows + 2 * g.kv_rows),
            (int(r_out), g.q_rows, d),
            (int(r_proj_1), d, 2 * g.ffn_dim),
            (int(r_proj_2), g.ffn_dim, d),
        ]
        layer = sum(r * (i + o) + o for r, i, o in shapes)
        assert number(trainable) == layer, g.index
        expected_total += layer
        magnitudes += sum(o for _, _, o in shapes)
    assert rows["0"][0] == "24" and rows["15"][0] == "41"  # proportional: deeper layers (more heads) get more rank
    embedding = 32 * (vocab + d)  # LoRA on the embedding (r 32): A (32 x vocab), B (d x 32)
    assert number(rows["transformer.token_embeddings (r 32)"][-1]) == embedding
    assert number(rows["total"][-1]) == expected_total + embedding
    assert number(rows["of which embedding"][-1]) == embedding
    assert number(rows["of which DoRA magnitudes"][-1]) == magnitudes == 158_336  # the embedding stays LoRA


def test_without_the_option_only_the_geometry_is_printed(tmp_path: Path) -> None:
    out = invoke("270M")
    assert "271,527,168" in out and "trainable" not in out


def test_saved_adapter_directory(make_tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    model = apply_adapter(make_tiny(), AdapterConfig(r=4, targets="q,v", layers="2-3", train_norms=True))
    save_adapter(model, tmp_path, base_name="tiny")
    out = invoke("tiny", "--adapter", str(tmp_path))
    rows = table_rows(out)

    # independent expectations: the adapter directory as written
    targets = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert {t.rsplit(".", 1)[1] for t in targets} == {"q", "v"} and "r q" in out and "r v" in out
    adapted_layers = {int(t.split(".")[2]) for t in targets}
    assert {name for name in rows if name.isdigit()} == {str(i) for i in adapted_layers} == {"2", "3"}
    for layer in adapted_layers:
        prefix = f"base_model.model.transformer.layers.{layer}."
        in_layer = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        norms = sum(v.numel() for k, v in in_layer.items() if "lora_" not in k)
        r_q, r_v, norm_cell, trainable = rows[str(layer)]
        assert (int(r_q), int(r_v)) == (4, 4) and number(norm_cell) == norms
        assert number(trainable) == sum(v.numel() for v in in_layer.values())
    assert number(rows["transformer.norm"][-1]) == tensors["base_model.model.transformer.norm.weight"].numel()
    assert number(rows["total"][-1]) == sum(v.numel() for v in tensors.values())
    assert number(rows["of which norms"][-1]) == sum(v.numel() for k, v in tensors.items() if "lora_" not in k)

    result = runner.invoke(app, ["inspect", "270M", "--adapter", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, AdapterError)
    assert "trained on a different base model" in str(result.exception)

"""Merging an adapter trained on a NF4 base: into the dequantised base, checked, the trained model reproduced."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

from elmtune.adapters import apply_adapter, save_adapter  # noqa: E402
from elmtune.adapters.config import AdapterConfig  # noqa: E402
from elmtune.merging import MergeOptions, merge_to_directory  # noqa: E402
from elmtune.models import OpenELMConfig, load_model  # noqa: E402
from elmtune.models.quantize import BaseQuantization  # noqa: E402


@pytest.fixture(scope="module")
def trained_on_nf4(
    tmp_path_factory: pytest.TempPathFactory, perturb, make_quantizable_tiny
) -> tuple[Path, Path, nn.Module]:
    """(base dir, adapter dir, the quantised peft model the adapter was saved from)."""
    root = tmp_path_factory.mktemp("qlora")
    make_quantizable_tiny().save_pretrained(root / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(
            load_model(root / "base"),
            AdapterConfig(r=4, alpha=8, targets=("q", "v", "proj_2")),
            quantization=BaseQuantization("nf4", torch.float32),
        )
    perturb(model)
    save_adapter(model.eval(), root / "adapter", base_name=str(root / "base"))
    return root / "base", root / "adapter", model


def test_the_adapter_records_the_quantised_weights_block_by_block(trained_on_nf4):
    base_dir, adapter_dir, _ = trained_on_nf4
    record = json.loads((adapter_dir / "elmtune_adapter.json").read_text())["base_quantization"]
    assert record["kind"] == "nf4" and record["compute_dtype"] == "float32" and record["double_quant"]
    config = OpenELMConfig.from_pretrained(base_dir)
    layers = config.num_transformer_layers
    assert len(record["weights"]) == 4 * layers  # qkv_proj, out_proj, proj_1, proj_2 per layer; no embedding, no head
    qkv = record["weights"]["transformer.layers.0.attn.qkv_proj.weight"]
    assert len(qkv) == 3 and qkv[0][0] == 0 and qkv[-1][1] > qkv[0][1]  # split into q | k | v before quantising


def test_merge_reproduces_the_model_trained_on_the_quantised_base(trained_on_nf4, tmp_path, ids):
    base_dir, adapter_dir, quantised = trained_on_nf4
    result = merge_to_directory(base_dir, adapter_dir, tmp_path / "merged", MergeOptions(progress=False))
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert result.report.verification is not None and result.report.verification.passed
    assert report["base_quantization"] == "nf4"
    assert "dequantised" in (tmp_path / "merged" / "README.md").read_text()
    merged = load_model(tmp_path / "merged").eval()
    with torch.no_grad():
        got, trained = merged(input_ids=ids).logits, quantised(input_ids=ids).logits
    torch.testing.assert_close(got, trained, rtol=1e-4, atol=1e-4)


def test_a_low_memory_merge_gives_the_same_tensors(trained_on_nf4, tmp_path):
    from safetensors.torch import load_file

    base_dir, adapter_dir, _ = trained_on_nf4
    merge_to_directory(base_dir, adapter_dir, tmp_path / "memory", MergeOptions(progress=False, verify=False))
    merge_to_directory(
        base_dir, adapter_dir, tmp_path / "stream", MergeOptions(progress=False, verify=False, low_memory=True)
    )
    memory = load_file(next((tmp_path / "memory").glob("*.safetensors")))
    stream = load_file(next((tmp_path / "stream").glob("*.safetensors")))
    assert memory.keys() == stream.keys() and all(torch.equal(memory[k], stream[k]) for k in memory)

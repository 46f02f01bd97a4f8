"""``merge_to_directory`` on the tiny OpenELM in fp32: merged == unmerged, Apple's keys, untouched rows, the check."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmtune.adapters import AdapterConfig, apply_adapter, load_adapter, save_adapter
from elmtune.merging.options import PROBE_TEXTS, MergeOptions, VerifyBudget
from elmtune.merging.run import MergeVerificationError, merge_to_directory
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model, saved_keys

PROBE = PROBE_TEXTS[:3]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("merge") / "base"
    OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).save_pretrained(path)
    return path


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, 32000, (2, 11), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_checkpoint_equals_unmerged_adapter(
    logits_of, trained_adapter, apple_keys, base_dir: Path, tmp_path: Path, ids: torch.Tensor, method: str
):
    adapter = trained_adapter(
        base_dir,
        tmp_path / "adapter",
        seed=1,
        base_name=str(base_dir),
        method=method,
        r=4,
        targets=("q", "v", "gate", "out_proj"),
    )
    result = merge_to_directory(base_dir, adapter, tmp_path / "merged", MergeOptions(probe_texts=PROBE))

    unmerged = load_adapter(load_model(base_dir), adapter)  # peft's own unmerged forward
    merged = load_model(result.path)
    base_logits, expected = logits_of(load_model(base_dir), ids), logits_of(unmerged, ids)
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(logits_of(merged, ids), expected, atol=1e-4, rtol=0)

    saved = load_file(result.path / "model.safetensors")
    assert set(saved) == apple_keys(4)  # exactly Apple's keys: no lm_head, no adapter names
    assert set(saved_keys(merged)) == apple_keys(4)
    base = load_file(base_dir / "model.safetensors")
    config = merged.config
    for i in range(4):
        q, kv = config.num_query_heads[i] * config.head_dim, config.num_kv_heads[i] * config.head_dim
        ffn = config.ffn_dims[i]  # proj_1 rows: gate | up
        qkv, new_qkv = (
            base[f"transformer.layers.{i}.attn.qkv_proj.weight"],
            saved[f"transformer.layers.{i}.attn.qkv_proj.weight"],
        )
        assert not torch.equal(new_qkv[:q], qkv[:q]) and not torch.equal(new_qkv[q + kv :], qkv[q + kv :])
        assert torch.equal(new_qkv[q : q + kv], qkv[q : q + kv])  # k rows untouched, bit for bit
        proj_1, new_proj_1 = (
            base[f"transformer.layers.{i}.ffn.proj_1.weight"],
            saved[f"transformer.layers.{i}.ffn.proj_1.weight"],
        )
        assert not torch.equal(new_proj_1[:ffn], proj_1[:ffn]) and torch.equal(new_proj_1[ffn:], proj_1[ffn:])
    untouched = [k for k in apple_keys(4) if not any(s in k for s in ("qkv_proj", "proj_1", "out_proj"))]
    assert all(torch.equal(saved[k], base[k]) for k in untouched)

    report = json.loads((result.path / "merge_report.json").read_text())
    check = report["verification"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0
    assert report["adapter"]["method"] == method and report["dtype"] == "float32"
    card = (result.path / "README.md").read_text()
    assert f"| max abs logit difference | {check['max_abs_diff']:.3g} | <= 0.0001 |" in card
    assert json.loads((result.path / "config.json").read_text())["num_query_heads"] == [4, 6, 6, 8]
    assert (result.path / "tokenizer.model").is_file() and (result.path / "tokenizer.json").is_file()


def test_merged_directory_loads_with_auto_class_and_exports_to_gguf(
    logits_of, trained_adapter, base_dir: Path, tmp_path: Path, ids: torch.Tensor
):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import elmtune  # noqa: F401 - registers OpenELM with transformers
    from elmtune.models.gguf import export_gguf

    adapter = trained_adapter(base_dir, tmp_path / "adapter", seed=1, base_name=str(base_dir), r=4, targets=("all",))
    out = merge_to_directory(base_dir, adapter, tmp_path / "merged", MergeOptions(verify=False)).path
    auto = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(auto) is OpenELMForCausalLM and auto.config.share_input_output_layers
    torch.testing.assert_close(logits_of(auto, ids), logits_of(load_model(out), ids), atol=0, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("Hello").input_ids == [1, 15043]

    report = export_gguf(out, tmp_path / "m.gguf", "f32")
    reader = gguf.GGUFReader(report.path)
    tensor = next(t for t in reader.tensors if t.name == "blk.1.attn_output.weight")
    expected = load_file(out / "model.safetensors")["transformer.layers.1.attn.out_proj.weight"]
    assert torch.equal(torch.from_numpy(tensor.data.copy()).reshape(expected.shape), expected)


def test_trained_norms_replace_the_base_norms(logits_of, base_dir: Path, tmp_path: Path, ids: torch.Tensor):
    adapter_dir = tmp_path / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(load_model(base_dir), AdapterConfig(r=4, targets=("v",), train_norms=True))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.1 * torch.randn_like(param))
    save_adapter(model, adapter_dir)
    result = merge_to_directory(base_dir, adapter_dir, tmp_path / "merged", MergeOptions(probe_texts=PROBE))
    assert "transformer.layers.2.ffn_norm.weight" in result.report.changed_tensors
    torch.testing.assert_close(logits_of(load_model(result.path), ids), logits_of(model.eval(), ids), atol=1e-4, rtol=0)


def test_a_wrong_merge_fails_the_check_and_leaves_nothing(trained_adapter, base_dir: Path, tmp_path: Path, monkeypatch):
    from elmtune.merging import merge

    adapter = trained_adapter(
        base_dir, tmp_path / "adapter", seed=1, base_name=str(base_dir), r=4, targets=("out_proj",)
    )
    real = merge.target_delta

    def off_by_one_percent(*args, **kwargs):  # a merge bug: the update scaled by 1.01
        return 1.01 * real(*args, **kwargs)

    monkeypatch.setattr(merge, "target_delta", off_by_one_percent)
    out = tmp_path / "out" / "merged"
    with pytest.raises(MergeVerificationError, match=r"max \|logit diff\| .* > 0.0001") as failure:
        merge_to_directory(base_dir, adapter, out, MergeOptions(probe_texts=PROBE))
    assert not failure.value.result.passed
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial directory either


def test_a_forced_tiny_budget_fails_even_a_correct_merge(trained_adapter, base_dir: Path, tmp_path: Path):
    adapter = trained_adapter(base_dir, tmp_path / "adapter", seed=1, base_name=str(base_dir), r=4, targets=("all",))
    options = MergeOptions(probe_texts=PROBE, budget=VerifyBudget(max_abs_diff=0.0))
    with pytest.raises(MergeVerificationError, match="Nothing was written"):
        merge_to_directory(base_dir, adapter, tmp_path / "merged", options)
    assert not (tmp_path / "merged").exists()
    assert merge_to_directory(
        base_dir, adapter, tmp_path / "merged", MergeOptions(probe_texts=PROBE)
    ).verification.passed


def test_existing_output_is_refused_unless_overwrite(trained_adapter, base_dir: Path, tmp_path: Path):
    from elmtune.output_paths import OutputExistsError

    adapter = trained_adapter(base_dir, tmp_path / "adapter", seed=1, base_name=str(base_dir), r=2, targets=("v",))
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        merge_to_directory(base_dir, adapter, out, MergeOptions(verify=False))
    merge_to_directory(base_dir, adapter, out, MergeOptions(verify=False, overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not the private mode of a temporary directory


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
def test_compare_logits_matches_its_formulas_in_any_chunking(chunk: int):
    from elmtune.merging.verify import compare_logits

    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(3, 7, 50, generator=generator) * 3  # (B, L, V)
    candidate = reference + 0.2 * torch.randn(3, 7, 50, generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0  # 7 + 4 + 2 = 13 real positions
    result = compare_logits(reference, candidate, mask, chunk=chunk)

    rows = [(b, t) for b in range(3) for t in range(7) if mask[b, t]]
    p = [reference[b, t].double().softmax(-1) for b, t in rows]
    q = [candidate[b, t].double().softmax(-1) for b, t in rows]
    kl = [float((pi * (pi / qi).log()).sum()) for pi, qi in zip(p, q, strict=True)]  # KL(p || q) per position
    agree = [int(reference[b, t].argmax() == candidate[b, t].argmax()) for b, t in rows]
    assert result.positions == 13 and result.finite
    assert result.max_abs_diff == pytest.approx(max(float((reference[r] - candidate[r]).abs().max()) for r in rows))
    assert result.mean_kl == pytest.approx(sum(kl) / 13, rel=1e-9)
    assert result.top1_agreement == pytest.approx(sum(agree) / 13) and 0 < result.top1_agreement < 1
    assert result.max_abs_logit == pytest.approx(max(float(reference[r].abs().max()) for r in rows))

    candidate[0, 3, 7] = float("nan")
    broken = compare_logits(reference, candidate, mask, chunk=chunk)
    assert not broken.finite and math.isnan(broken.max_abs_diff) and broken.positions == 13


def test_the_check_holds_one_decoder_layer_at_a_time(trained_adapter, base_dir: Path, tmp_path: Path, monkeypatch):
    """The check runs both models layer by layer: never more than one decoder layer's weights materialised."""
    from elmtune.merging import verify

    adapter = trained_adapter(base_dir, tmp_path / "adapter", seed=1, base_name=str(base_dir), r=4, targets=("all",))
    layers: list[torch.nn.Module] = []
    most = 0
    real = verify._materialise

    def counting(module, prefix, source, device):
        nonlocal most
        real(module, prefix, source, device)
        if prefix.startswith("transformer.layers."):
            layers.append(module)
            live = sum(any(p.device.type != "meta" for p in layer.parameters()) for layer in layers)
            most = max(most, live)

    monkeypatch.setattr(verify, "_materialise", counting)
    options = MergeOptions(low_memory=True, probe_texts=PROBE)
    assert merge_to_directory(base_dir, adapter, tmp_path / "merged", options).verification.passed
    assert len(layers) == 2 * 4  # the reference and the merged model, 4 layers each
    assert most == 1

"""Tied output head: a merged embedding adapter changes the head (tied, default) or not (untied); the check's
reference follows the choice. Also: the unmerged reference (forward hooks) equals peft's unmerged forward."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from elmtune.adapters import AdapterConfig, apply_adapter, load_adapter, save_adapter
from elmtune.merging import parse_adapter, read_adapter
from elmtune.merging.options import PROBE_TEXTS, MergeOptions
from elmtune.merging.run import merge_to_directory
from elmtune.merging.unmerged_reference import attach_unmerged_adapter
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model

PROBE = PROBE_TEXTS[:3]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("embed") / "base"
    OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_dir(base_dir: Path, perturb) -> Path:
    """LoRA on the token embedding (scaling 1) and on v."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(load_model(base_dir), AdapterConfig(r=4, alpha=4, targets=("token_embeddings", "v")))
    path = base_dir.parent / "adapter"
    perturb(model, seed=2)
    save_adapter(model, path)
    return path


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, 32000, (2, 10), generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_reference_hooks_equal_peft_unmerged_forward(
    logits_of, perturb, base_dir: Path, tmp_path: Path, ids: torch.Tensor, method: str
):
    targets = ("token_embeddings", "q", "v", "gate", "out_proj", "proj_2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(load_model(base_dir), AdapterConfig(method=method, r=4, alpha=8, targets=targets))
    perturb(model, seed=2)
    save_adapter(model, tmp_path)
    expected = logits_of(load_adapter(load_model(base_dir), tmp_path), ids)

    plain = load_model(base_dir)
    handles = attach_unmerged_adapter(plain, parse_adapter(read_adapter(tmp_path)), adapted_head=False)
    torch.testing.assert_close(logits_of(plain, ids), expected, atol=1e-5, rtol=0)
    for handle in handles:
        handle.remove()
    assert (logits_of(plain, ids) - expected).abs().max() > 1e-2  # the hooks were doing the work


def test_tied_merge_puts_the_adapted_embedding_in_the_head(
    logits_of, base_dir: Path, adapter_dir: Path, tmp_path: Path, ids: torch.Tensor
):
    result = merge_to_directory(base_dir, adapter_dir, tmp_path / "tied", MergeOptions(probe_texts=PROBE))
    saved = load_file(result.path / "model.safetensors")
    config = json.loads((result.path / "config.json").read_text())
    assert config["share_input_output_layers"] is True and "lm_head.weight" not in saved

    tensors = read_adapter(adapter_dir).tensors
    prefix = "base_model.model.transformer.token_embeddings."
    a, b = tensors[prefix + "lora_embedding_A"].double(), tensors[prefix + "lora_embedding_B"].double()
    base_embedding = load_file(base_dir / "model.safetensors")["transformer.token_embeddings.weight"]
    expected_embedding = (base_embedding.double() + (b @ a).T).float()  # s = alpha / r = 1
    torch.testing.assert_close(saved["transformer.token_embeddings.weight"], expected_embedding, atol=1e-6, rtol=0)

    # peft's own merge of the same adapter also changes the tied head: that is the model a tied merge must equal
    peft_merged = load_adapter(load_model(base_dir), adapter_dir).merge_and_unload()
    merged = load_model(result.path)
    torch.testing.assert_close(logits_of(merged, ids), logits_of(peft_merged, ids), atol=1e-4, rtol=0)
    unmerged = logits_of(load_adapter(load_model(base_dir), adapter_dir), ids)
    assert (logits_of(merged, ids) - unmerged).abs().max() > 1e-2  # ...and it is not the unmerged adapter

    check = result.report.verification
    assert check.passed and "adapted embedding" in check.reference
    assert check.head_change.max_abs_diff > 1e-2
    head = result.report.head
    assert (head.adapted, head.tied, head.untied_by_request) == (True, True, False)
    assert "--untie-embeddings" in (result.path / "README.md").read_text()


def test_untied_merge_equals_the_unmerged_adapter(
    logits_of, base_dir: Path, adapter_dir: Path, tmp_path: Path, ids: torch.Tensor
):
    from elmtune.models.gguf import GGUFExportError, export_gguf

    options = MergeOptions(untie_embeddings=True, probe_texts=PROBE)
    result = merge_to_directory(base_dir, adapter_dir, tmp_path / "untied", options)
    saved = load_file(result.path / "model.safetensors")
    base_embedding = load_file(base_dir / "model.safetensors")["transformer.token_embeddings.weight"]
    assert torch.equal(saved["lm_head.weight"], base_embedding)  # the head the unmerged adapter reads
    assert json.loads((result.path / "config.json").read_text())["share_input_output_layers"] is False

    merged = load_model(result.path)
    assert not merged.head_is_tied and merged.output_weight() is not merged.get_input_embeddings().weight
    unmerged = logits_of(load_adapter(load_model(base_dir), adapter_dir), ids)
    torch.testing.assert_close(logits_of(merged, ids), unmerged, atol=1e-4, rtol=0)
    check = result.report.verification
    assert check.passed and check.reference == "the unmerged adapter"
    assert check.head_change is None
    with pytest.raises(GGUFExportError, match="untied output head"):
        export_gguf(result.path, tmp_path / "m.gguf", "f32")


def test_plain_peft_dora_embedding_merges_and_checks(
    logits_of, perturb, base_dir: Path, tmp_path: Path, ids: torch.Tensor
):
    """peft's own DoRA embedding (magnitude per embedding dimension), saved by plain peft (no elmtune metadata)."""
    config = LoraConfig(r=4, lora_alpha=4, use_dora=True, target_modules=["token_embeddings", "out_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(load_model(base_dir), config)
    perturb(model, seed=2)
    model.save_pretrained(tmp_path / "adapter")
    expected = logits_of(model.eval(), ids)
    options = MergeOptions(untie_embeddings=True, probe_texts=PROBE)
    result = merge_to_directory(base_dir, tmp_path / "adapter", tmp_path / "merged", options)
    assert result.verification.passed and result.report.adapter.method == "dora"
    torch.testing.assert_close(logits_of(load_model(result.path), ids), expected, atol=1e-4, rtol=0)

"""The same adapter API on the decoders OpenELM is compared with, through ``all-linear`` targeting (tiny configs)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from elmtune.adapters import (
    AdapterConfig,
    AdapterError,
    apply_adapter,
    load_adapter,
    resolve_targets,
    save_adapter,
)
from elmtune.merging import StateDictSource, merge_tensor, parse_adapter, read_adapter

EXPECTED_KINDS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "olmo": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "gpt_neox": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
    "opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
}


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_all_linear_lora_and_dora(logits_of, other_architecture, arch: str, method: str, tmp_path: Path) -> None:
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    base = logits_of(other_architecture(arch), ids)
    cfg = AdapterConfig(method=method, r=4, alpha=8, targets="all-linear")
    names = resolve_targets(other_architecture(arch), cfg).names
    assert {n.rsplit(".", 1)[-1] for n in names} == EXPECTED_KINDS[arch]
    assert not any(n.startswith(("lm_head", "embed_out")) for n in names)

    model = apply_adapter(other_architecture(arch), cfg)
    torch.testing.assert_close(logits_of(model, ids), base, atol=1e-5, rtol=0)  # B = 0: the base model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                param.add_(torch.randn_like(param) * 0.1)
    adapted = logits_of(model, ids)
    assert (adapted - base).abs().max() > 1e-3

    save_adapter(model, tmp_path)
    torch.testing.assert_close(
        logits_of(load_adapter(other_architecture(arch), tmp_path), ids), adapted, atol=1e-6, rtol=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = PeftModel.from_pretrained(other_architecture(arch), str(tmp_path))
    torch.testing.assert_close(logits_of(plain, ids), adapted, atol=1e-5, rtol=0)

    merged = other_architecture(arch)
    source, parsed = StateDictSource(other_architecture(arch).state_dict()), parse_adapter(read_adapter(tmp_path))
    merged.load_state_dict({key: merge_tensor(source, parsed, key, source.dtype(key)) for key in source.keys()})
    torch.testing.assert_close(logits_of(merged, ids), adapted, atol=1e-5, rtol=0)


def test_fingerprint_covers_other_architectures(other_architecture, tmp_path: Path) -> None:
    save_adapter(apply_adapter(other_architecture("llama"), AdapterConfig(r=2, targets="all-linear")), tmp_path)
    wider = other_architecture("llama", intermediate_size=64)
    with pytest.raises(AdapterError, match="layer 0 is [0-9a-f]+ there but [0-9a-f]+ here"):
        load_adapter(wider, tmp_path)

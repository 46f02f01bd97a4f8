"""The same adapter API on the decoders OpenELM is compared with, through ``all-linear`` targeting (tiny configs)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel
from torch import nn

from elmtune.adapters import (
    AdapterConfig,
    AdapterError,
    apply_adapter,
    load_adapter,
    resolve_targets,
    save_adapter,
)
from elmtune.merging import StateDictSource, merge_tensor, parse_adapter, read_adapter

TINY = {"vocab_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}
ARCHS = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"hidden_size": 32, "intermediate_size": 48, "num_key_value_heads": 2},
    ),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {"hidden_size": 32, "intermediate_size": 48}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"hidden_size": 32, "intermediate_size": 48, "pad_token_id": 0}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"hidden_size": 32, "intermediate_size": 48}),
    "opt": ("OPTConfig", "OPTForCausalLM", {"hidden_size": 32, "ffn_dim": 48, "word_embed_proj_dim": 32}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 96}),
}
EXPECTED_KINDS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "olmo": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "gpt_neox": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
    "opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
}


def build(arch: str, seed: int = 0) -> nn.Module:
    config_name, model_name, extra = ARCHS[arch]
    fields = {**TINY, **extra} if arch != "gpt2" else extra
    config = getattr(transformers, config_name)(**fields)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_all_linear_lora_and_dora(logits_of, arch: str, method: str, tmp_path: Path) -> None:
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    base = logits_of(build(arch), ids)
    cfg = AdapterConfig(method=method, r=4, alpha=8, targets="all-linear")
    names = resolve_targets(build(arch), cfg).names
    assert {n.rsplit(".", 1)[-1] for n in names} == EXPECTED_KINDS[arch]
    assert not any(n.startswith(("lm_head", "embed_out")) for n in names)

    model = apply_adapter(build(arch), cfg)
    torch.testing.assert_close(logits_of(model, ids), base, atol=1e-5, rtol=0)  # B = 0: the base model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                param.add_(torch.randn_like(param) * 0.1)
    adapted = logits_of(model, ids)
    assert (adapted - base).abs().max() > 1e-3

    save_adapter(model, tmp_path)
    torch.testing.assert_close(logits_of(load_adapter(build(arch), tmp_path), ids), adapted, atol=1e-6, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = PeftModel.from_pretrained(build(arch), str(tmp_path))
    torch.testing.assert_close(logits_of(plain, ids), adapted, atol=1e-5, rtol=0)

    merged = build(arch)
    source, parsed = StateDictSource(build(arch).state_dict()), parse_adapter(read_adapter(tmp_path))
    merged.load_state_dict({key: merge_tensor(source, parsed, key, source.dtype(key)) for key in source.keys()})
    torch.testing.assert_close(logits_of(merged, ids), adapted, atol=1e-5, rtol=0)


def test_fingerprint_covers_other_architectures(tmp_path: Path) -> None:
    save_adapter(apply_adapter(build("llama"), AdapterConfig(r=2, targets="all-linear")), tmp_path)
    config_name, model_name, extra = ARCHS["llama"]
    wider = getattr(transformers, model_name)(
        getattr(transformers, config_name)(**{**TINY, **extra, "intermediate_size": 64})
    )
    with pytest.raises(AdapterError, match="layer 0 is [0-9a-f]+ there but [0-9a-f]+ here"):
        load_adapter(wider, tmp_path)

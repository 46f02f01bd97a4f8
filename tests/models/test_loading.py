"""load_model: presets, directories, dtypes, and the offline error."""

import huggingface_hub.constants
import pytest
import torch

from elmtune.errors import ModelNotFoundError
from elmtune.models import OpenELMForCausalLM, load_model


def test_preset_builds_random_weights_in_requested_dtype():
    model = load_model("tiny", dtype="bf16")
    assert isinstance(model, OpenELMForCausalLM) and model.dtype == torch.bfloat16 and not model.training


def test_directory_loads_and_can_change_dtype(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.transformer.norm.weight.float(), tiny_model.transformer.norm.weight)


def test_offline_hub_id_gives_one_line_actionable_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_model("apple/OpenELM-3B-Instruct")
    message = str(info.value)
    assert "\n" not in message and "hf download apple/OpenELM-3B-Instruct" in message and "preset '3B'" in message


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_preset_weights_are_deterministic_and_leave_the_callers_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = load_model("tiny").state_dict()
    assert torch.equal(torch.rand(3), expected_next)  # the global stream did not move
    torch.manual_seed(7)
    second = load_model("tiny").state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first["transformer.layers.0.attn.qkv_proj.weight"].std() > 0  # real random init, not zeros


@pytest.mark.parametrize("build", ["preset", "constructor"])
def test_weights_follow_apples_initialisation(build):
    """Spec 5.5: Linear std in^-0.5, embedding d^-0.5, out_proj and proj_2 d^-0.5 (2L)^-0.5, norms at one."""
    if build == "preset":
        model = load_model("tiny")
    else:
        torch.manual_seed(0)
        model = OpenELMForCausalLM(load_model("tiny").config)
    config = model.config
    d, layers = config.model_dim, config.num_transformer_layers
    residual = d**-0.5 * (2 * layers) ** -0.5
    assert model.transformer.token_embeddings.weight.std().item() == pytest.approx(d**-0.5, rel=0.02)
    assert model.lm_head.weight is model.transformer.token_embeddings.weight
    for layer in model.transformer.layers:
        attn, ffn = layer.attn, layer.ffn
        for projection, std in (
            (attn.qkv_proj, attn.qkv_proj.in_features**-0.5),
            (attn.out_proj, residual),
            (ffn.proj_1, ffn.proj_1.in_features**-0.5),
            (ffn.proj_2, residual),
        ):
            assert projection.weight.std().item() == pytest.approx(std, rel=0.05)
            assert abs(projection.weight.mean().item()) < 0.1 * std
        for norm in (layer.attn_norm, layer.ffn_norm, attn.q_norm, attn.k_norm):
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))

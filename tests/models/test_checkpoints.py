"""Checkpoint directories: Apple's keys and config fields, lossless load/save, Auto classes without remote code."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from elmtune.models import OpenELMConfig, OpenELMForCausalLM

# The fields of Apple's configuration_openelm.OpenELMConfig (num_kv_heads is derived and saved as well).
APPLE_CONFIG_FIELDS = (
    "vocab_size",
    "max_context_length",
    "num_transformer_layers",
    "model_dim",
    "head_dim",
    "qkv_multipliers",
    "num_query_heads",
    "num_gqa_groups",
    "ffn_multipliers",
    "ffn_with_glu",
    "ffn_dim_divisor",
    "activation_fn_name",
    "normalization_layer_name",
    "normalize_qk_projections",
    "share_input_output_layers",
    "rope_freq_constant",
    "rope_max_length",
    "initializer_range",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
)

TRAP = 'raise RuntimeError("remote code was executed")\n'


@pytest.fixture
def hub_style_dir(tmp_path, apple_keys):
    """A directory laid out like a hub OpenELM checkpoint: Apple's config.json (auto_map, per-layer lists, bf16),
    bf16 safetensors with Apple's keys, and remote-code files that fail loudly if anything executes them."""
    config = OpenELMConfig.from_preset("tiny")
    torch.manual_seed(0)
    state = OpenELMForCausalLM(config).state_dict()
    weights = {k: state[k].to(torch.bfloat16) for k in apple_keys(config.num_transformer_layers)}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    fields = {name: getattr(config, name) for name in APPLE_CONFIG_FIELDS}
    fields |= {
        "num_kv_heads": config.num_kv_heads,
        "architectures": ["OpenELMForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_openelm.OpenELMConfig",
            "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM",
        },
        "model_type": "openelm",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.39.3",
    }
    (tmp_path / "config.json").write_text(json.dumps(fields, indent=2))
    for name in ("configuration_openelm.py", "modeling_openelm.py"):
        (tmp_path / name).write_text(TRAP)
    return tmp_path


def test_save_load_round_trip_is_bit_identical(tmp_path, tiny_model, apple_keys):
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model.to(dtype)
        model.save_pretrained(tmp_path / str(dtype))
        saved = load_file(tmp_path / str(dtype) / "model.safetensors")
        assert set(saved) == apple_keys(4)  # no lm_head.weight, no buffers
        reloaded = OpenELMForCausalLM.from_pretrained(tmp_path / str(dtype))
        assert reloaded.dtype == dtype
        for key, value in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[key], value), key


def test_saved_config_has_apple_fields_and_per_layer_lists(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(APPLE_CONFIG_FIELDS) <= set(saved)
    assert saved["model_type"] == "openelm" and saved["architectures"] == ["OpenELMForCausalLM"]
    assert saved["num_query_heads"] == [4, 6, 6, 8] and saved["num_kv_heads"] == [2, 3, 3, 4]
    assert len(saved["ffn_multipliers"]) == 4


def test_published_preset_config_points_apple_code_at_its_hub_repo():
    auto_map = OpenELMConfig.from_preset("apple/OpenELM-450M-Instruct").auto_map
    assert auto_map["AutoModelForCausalLM"] == "apple/OpenELM-450M-Instruct--modeling_openelm.OpenELMForCausalLM"


def test_hub_directory_loads_natively_and_resaves_losslessly(hub_style_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hub_style_dir)
    assert type(model) is OpenELMForCausalLM and model.dtype == torch.bfloat16
    assert type(AutoConfig.from_pretrained(hub_style_dir)) is OpenELMConfig
    out = tmp_path / "resaved"
    model.save_pretrained(out)
    original, resaved = load_file(hub_style_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(original) == set(resaved)
    for key in original:
        assert resaved[key].dtype == torch.bfloat16 and torch.equal(original[key], resaved[key]), key
    before = json.loads((hub_style_dir / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    for field in (*APPLE_CONFIG_FIELDS, "num_kv_heads", "auto_map", "architectures", "model_type"):
        assert after[field] == before[field], field


@pytest.mark.parametrize(
    "first",
    [
        "elmtune; assert 'torch' not in sys.modules",  # `import elmtune` stays light, yet Auto* resolve our class
        "elmtune.models.modeling",  # imports transformers, whose auto modules must wait for the class it defines
        "elmtune.models.configuration",
        "elmtune.models",
        "elmtune.models.layers",  # imports transformers before it defines the classes the model module takes from it
    ],
)
def test_the_auto_classes_resolve_openelm_whatever_is_imported_first(hub_style_dir, first):
    code = (
        f"import sys, {first}\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(hub_style_dir)!r})\n"
        "print(type(AutoConfig.for_model('openelm')).__name__, type(model).__module__, type(model).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OpenELMConfig elmtune.models.modeling OpenELMForCausalLM")

"""QLoRA: a NF4/int8 bitsandbytes base under LoRA/DoRA, checked against bitsandbytes' own (de)quantisation."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

from peft import get_peft_model_state_dict, set_peft_model_state_dict  # noqa: E402

from elmtune.adapters import apply_adapter  # noqa: E402
from elmtune.adapters.config import AdapterConfig  # noqa: E402
from elmtune.errors import ConfigError  # noqa: E402
from elmtune.models.device import plan_precision  # noqa: E402
from elmtune.models.linear import OpenELMLinear  # noqa: E402
from elmtune.models.quantize import BaseQuantization, quantize_linears  # noqa: E402

NF4 = BaseQuantization("nf4", torch.float32)
SUB_PROJECTIONS = {"r": 4, "alpha": 8, "targets": ("q", "v", "out_proj", "up", "proj_2")}


def _nf4_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' functional NF4 (blocks of 64, double quantisation) there and back, fp32."""
    packed, state = bnb.functional.quantize_4bit(
        weight.float(), blocksize=64, compress_statistics=True, quant_type="nf4"
    )
    return bnb.functional.dequantize_4bit(packed, state)


def _dequantized_tiny(make_model, quantised: nn.Module) -> nn.Module:
    """``make_model()`` in fp32, every Linear but the head replaced by its NF4 round trip, block by block as split."""
    from elmtune.adapters.fused import RowSplitLinear

    model = make_model()
    split = {n: m.row_ranges() for n, m in quantised.base_model.model.named_modules() if isinstance(m, RowSplitLinear)}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, OpenELMLinear) and not name.endswith("lm_head"):
                blocks = split.get(name, {"all": (0, module.out_features)}).values()
                module.weight.copy_(torch.cat([_nf4_round_trip(module.weight[a:b]) for a, b in blocks]))
    return model


def _adapted(model: nn.Module, quantization: BaseQuantization | None, perturb, **settings: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = apply_adapter(model, AdapterConfig(**{**SUB_PROJECTIONS, **settings}), quantization=quantization)
    perturb(peft_model)
    return peft_model.eval()


def test_only_the_linears_are_quantised_within_nf4_error(make_quantizable_tiny):
    model = make_quantizable_tiny()
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, OpenELMLinear)}
    embedding = model.get_input_embeddings().weight.detach().clone()
    names = quantize_linears(model, NF4)
    assert names and set(names) == {n for n in originals if not n.endswith("lm_head")}
    assert all(n.split(".")[-1] in ("qkv_proj", "out_proj", "proj_1", "proj_2") for n in names)
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.dtype == torch.uint8
        dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        original = originals[name]
        torch.testing.assert_close(dequantized, _nf4_round_trip(original), rtol=0, atol=0)
        # NF4's largest gap between levels is about 0.34 of the block absmax: no weight moves by more than half of it
        block_absmax = original.reshape(-1, 64).abs().amax(dim=1, keepdim=True)
        assert ((dequantized - original).reshape(-1, 64).abs() <= 0.18 * block_absmax + 1e-6).all()
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "norm" in n)


def test_quantised_adapter_equals_an_fp32_model_on_the_dequantised_weights(make_quantizable_tiny, perturb, ids):
    quantised = _adapted(make_quantizable_tiny(), NF4, perturb)
    kinds = {type(m).__module__ for m in quantised.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")}
    assert kinds == {"peft.tuners.lora.bnb"}  # peft's bitsandbytes LoRA layers, not the fp layers
    reference = make_quantizable_tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = apply_adapter(reference, AdapterConfig(**SUB_PROJECTIONS)).eval()
    with torch.no_grad():
        for name, module in reference.base_model.model.named_modules():
            if isinstance(module, OpenELMLinear) and not name.endswith("lm_head") and "lora_" not in name:
                module.weight.copy_(_nf4_round_trip(module.weight))  # each split row block on its own
    set_peft_model_state_dict(reference, get_peft_model_state_dict(quantised))
    with torch.no_grad():
        got, expected = quantised(input_ids=ids).logits, reference(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("kind", "method"), [("nf4", "lora"), ("nf4", "dora"), ("int8", "lora")])
def test_training_on_a_quantised_base_lowers_the_loss_and_moves_only_the_adapter(
    make_quantizable_tiny, ids, kind, method
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(
            make_quantizable_tiny(),
            AdapterConfig(r=4, alpha=8, method=method, targets=("qkv_proj", "proj_2")),
            quantization=BaseQuantization(kind, torch.float32),
        )
    frozen = {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" not in n}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())


def test_a_missing_bitsandbytes_is_one_line_naming_the_key(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(ConfigError, match=r"train\.base_dtype nf4 .*pip install 'elmtune\[qlora\]'") as info:
        plan_precision(torch.device("cpu"), "auto", "nf4")
    assert info.value.key == "train.base_dtype" and "\n" not in str(info.value)


def test_a_quantised_plan_keeps_the_rest_in_the_compute_dtype():
    plan = plan_precision(torch.device("cpu"), "auto", "nf4")
    assert plan.quantization == "nf4" and plan.base_dtype == torch.float32 and "nf4" in plan.note
    assert plan_precision(torch.device("cpu"), "bf16", "int8").base_dtype == torch.bfloat16
    assert plan_precision(torch.device("cpu"), "auto", "fp32").quantization is None


def test_the_preference_reference_runs_on_the_same_quantised_base(make_quantizable_tiny, perturb, ids, tmp_path):
    from elmtune.adapters.io import load_adapter, load_frozen_copy, save_adapter
    from elmtune.finetune.reference import REFERENCE_ADAPTER, reference_mode

    trained = _adapted(make_quantizable_tiny(), NF4, perturb)
    save_adapter(trained, tmp_path / "sft")
    dequantized_base = _dequantized_tiny(make_quantizable_tiny, trained)
    with torch.no_grad(), reference_mode(trained, None) as reference:
        torch.testing.assert_close(reference(input_ids=ids).logits, dequantized_base(input_ids=ids).logits)
    # SFT -> DPO: the saved adapter continues on a freshly quantised base, its frozen copy is the reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = load_adapter(make_quantizable_tiny(), tmp_path / "sft", is_trainable=True, quantization=NF4)
        load_frozen_copy(policy, tmp_path / "sft", REFERENCE_ADAPTER)
    assert all(type(m).__module__ == "peft.tuners.lora.bnb" for m in policy.modules() if hasattr(m, "lora_A"))
    with torch.no_grad(), reference_mode(policy, REFERENCE_ADAPTER) as reference:
        torch.testing.assert_close(reference(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_a_base_rewriting_init_or_an_unknown_base_dtype_is_one_line_naming_the_key():
    from elmtune.finetune.config import RunConfig

    recipe = {"model": "tiny", "data": {"path": "x.json"}}
    with pytest.raises(ConfigError, match=r"adapter\.init pissa rewrites the base weights") as info:
        RunConfig.from_dict({**recipe, "adapter": {"init": "pissa"}, "train": {"base_dtype": "nf4"}})
    assert info.value.key == "adapter.init"
    with pytest.raises(ConfigError, match=r"must be auto, fp32, bf16, fp16, nf4 or int8: 'nf8'") as info:
        RunConfig.from_dict({**recipe, "train": {"base_dtype": "nf8"}})
    assert info.value.key == "train.base_dtype"


def test_a_wrong_round_trip_is_refused_naming_the_layer(make_quantizable_tiny, monkeypatch):
    import elmtune.models.quantize as quantize_module
    from elmtune.models.quantize import check_round_trip, quantize_linears

    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    check_round_trip("w", weight, _nf4_round_trip(weight), "nf4")  # bitsandbytes' own round trip passes
    shifted = weight.clone()
    shifted[3, 5] += 0.5 * weight[3].abs().max()  # one weight half its block's absmax off
    with pytest.raises(ConfigError, match=r"quantised w \(8, 64\) with an error of 0\.5\d of its block absmax"):
        check_round_trip("w", weight, shifted, "nf4")
    with pytest.raises(ConfigError, match=r"of its row absmax, over the 0\.01 int8 allows"):
        check_round_trip("w", weight, weight * 1.02, "int8")

    original = quantize_module.dequantized_weight

    def reversed_weights(layer: nn.Module) -> torch.Tensor:  # a build whose round trip comes back out of order
        weight = original(layer)  # (out, in)
        return weight.flatten().flip(0).view_as(weight)

    monkeypatch.setattr(quantize_module, "dequantized_weight", reversed_weights)
    with pytest.raises(ConfigError, match=r"transformer\.layers\.0\.attn\.qkv_proj \(256, 256\)") as info:
        quantize_linears(make_quantizable_tiny(), NF4)
    assert info.value.key == "train.base_dtype" and "use --base-dtype auto, or a GPU" in str(info.value)

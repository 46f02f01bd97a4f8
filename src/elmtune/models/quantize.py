"""A quantised frozen base (QLoRA): a model's Linear layers as bitsandbytes 4-bit NF4 or 8-bit layers.

What is quantised: every ``nn.Linear`` of the model except the output head (``lm_head``, when untied), i.e. OpenELM's
``qkv_proj``, ``out_proj``, ``proj_1`` and ``proj_2`` in every layer, or their row blocks when a fused module was split
for sub-projection adapters (split first, on the full-precision weights, then quantise each block). Embeddings, norms
and the head stay in the compute dtype.

* ``nf4``: ``bnb.nn.Linear4bit``, 4-bit NormalFloat in blocks of 64 weights with double quantisation (each block's
  fp32 absmax stored as 8 bits in groups of 256, plus one fp32 offset and a 256-entry fp32 code per tensor); the
  matmul dequantises to the compute dtype. About 0.5 byte per weight plus 1/64 byte of absmax per weight.
* ``int8``: ``bnb.nn.Linear8bitLt`` (LLM.int8(), threshold 0): int8 weights with one fp32 scale per output row;
  activations are quantised per row for the matmul. 1 byte per weight plus 4 bytes per row.

:func:`fake_quantize` gives ``dequant(quant(W))`` for a weight without a model: merging an adapter trained on a
quantised base starts from these weights, so the merged model is the model that was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch
from torch import nn

from elmtune.errors import ConfigError
from elmtune.models.linear import OpenELMLinear

QuantKind = Literal["nf4", "int8"]
QUANT_KINDS: tuple[str, ...] = ("nf4", "int8")
NF4_BLOCK_SIZE = 64
MIN_BITSANDBYTES = (0, 49)
"""Oldest bitsandbytes whose CPU NF4 and int8 layers run forward and backward."""
ROUND_TRIP_LIMITS = {"nf4": 0.25, "int8": 0.01}
"""Largest ``|dequant(quant(W)) - W|`` accepted, as a fraction of the absmax of the weight's block (NF4: 64 weights;
its widest gap between levels is 0.28 of the absmax, so a correct round trip stays under 0.16) or row (int8: half a
level is 1/254 of it)."""

_INSTALL = "pip install 'elmtune[qlora]'"


@dataclass(frozen=True)
class BaseQuantization:
    """How a base model's Linear layers are quantised.

    Attributes:
        kind: ``nf4`` (4-bit NormalFloat, double quantisation) or ``int8`` (LLM.int8()).
        compute_dtype: dtype the quantised matmuls compute in, and that the unquantised parts keep.
    """

    kind: QuantKind
    compute_dtype: torch.dtype


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def require_bitsandbytes(kind: str, device: torch.device | str = "cpu") -> ModuleType:
    """The bitsandbytes module, when it can quantise a base as ``kind`` on ``device``.

    Raises:
        ConfigError: bitsandbytes is missing or too old, or the device is one it does not support (one line naming
            ``train.base_dtype``).
    """
    device_type = torch.device(device).type
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(
            f"train.base_dtype {kind} (--base-dtype) needs bitsandbytes, which is not installed: {_INSTALL}, "
            "or use --base-dtype auto",
            key="train.base_dtype",
        ) from None
    version = getattr(bitsandbytes, "__version__", "0.0")
    if _version(version) < MIN_BITSANDBYTES or device_type not in ("cpu", "cuda"):
        where = f"bitsandbytes {version}" if device_type in ("cpu", "cuda") else f"the {device_type} device"
        raise ConfigError(
            f"train.base_dtype {kind} (--base-dtype): {where} cannot quantise here; it needs bitsandbytes >= "
            f"{'.'.join(map(str, MIN_BITSANDBYTES))} on cpu or cuda ({_INSTALL} --upgrade), or use --base-dtype auto",
            key="train.base_dtype",
        )
    return bitsandbytes


def quantizable_linears(model: nn.Module) -> list[str]:
    """Full names of the Linear layers :func:`quantize_linears` replaces: every ``nn.Linear`` but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, module in model.named_modules()
        if type(module) in (nn.Linear, OpenELMLinear) and module is not head and not name.endswith("lm_head")
    ]


def _quantized_layer(bnb: ModuleType, linear: nn.Linear, quantization: BaseQuantization) -> nn.Module:
    """A bitsandbytes layer holding ``linear``'s weight quantised (on ``linear``'s device), bias in compute dtype."""
    weight = linear.weight.data.to(quantization.compute_dtype)  # (out, in)
    bias = linear.bias is not None
    if quantization.kind == "nf4":
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=bias,
            compute_dtype=quantization.compute_dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, compress_statistics=True, quant_type="nf4", blocksize=NF4_BLOCK_SIZE
        )
        # bitsandbytes >= 0.50 repacks 4-bit weights on AVX512-BF16 CPUs for no-grad forwards and multiplies them in
        # bf16 whatever the compute dtype (up to 0.07 off fp32 on the tiny model's logits), so that evaluation and a
        # DPO reference would not compute what training computes. Keep the one dequantise-and-matmul path.
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False, threshold=0.0, device="meta"
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if bias:
        layer.bias = nn.Parameter(linear.bias.data.to(quantization.compute_dtype), requires_grad=False)
    return layer.to(linear.weight.device)  # bitsandbytes quantises when the layer is moved to a device


def check_round_trip(
    name: str, source: torch.Tensor, restored: torch.Tensor, kind: str, remedy: str = "use --base-dtype auto, or a GPU"
) -> None:
    """Refuse a quantisation whose round trip is outside ``kind``'s error bound (:data:`ROUND_TRIP_LIMITS`).

    bitsandbytes 0.49-0.50 on CPUs with AVX-512 gets NF4 wrong for weights whose rows are not a multiple of 64 long
    (blocks that straddle rows come back with errors of the size of the weights): this check stops a run from
    training or merging on such a base.

    Args:
        name: The layer, for the message.
        source: The weight that was quantised (out, in).
        restored: ``dequant(quant(source))`` (out, in).
        kind: ``nf4`` or ``int8``.
        remedy: What the user can do instead, for the message.

    Raises:
        ConfigError: One line naming the layer, its shape, the error and the remedy.
    """
    import bitsandbytes

    shape = tuple(source.shape)
    source, restored = source.detach().float().cpu(), restored.detach().float().cpu()
    if kind == "nf4":  # blocks of 64 consecutive weights, the last one zero-padded
        pad = -source.numel() % NF4_BLOCK_SIZE
        source = torch.nn.functional.pad(source.flatten(), (0, pad)).view(-1, NF4_BLOCK_SIZE)
        restored = torch.nn.functional.pad(restored.flatten(), (0, pad)).view(-1, NF4_BLOCK_SIZE)
    error = ((restored - source).abs().amax(dim=-1) / source.abs().amax(dim=-1).clamp_min(1e-12)).max().item()
    if error > ROUND_TRIP_LIMITS[kind]:
        unit = "block" if kind == "nf4" else "row"
        raise ConfigError(
            f"{kind}: bitsandbytes {bitsandbytes.__version__} quantised {name} {shape} with an error of {error:.2f} "
            f"of its {unit} absmax, over the {ROUND_TRIP_LIMITS[kind]} {kind} allows (this build gets such shapes "
            f"wrong on this CPU); {remedy}",
            key="train.base_dtype",
        )


def quantize_linears(model: nn.Module, quantization: BaseQuantization) -> list[str]:
    """Replace the model's Linear layers (:func:`quantizable_linears`) by bitsandbytes layers, in place.

    The model is marked as peft expects of a quantised base (``is_loaded_in_4bit``/``is_loaded_in_8bit``), so peft
    wraps these layers in its bitsandbytes LoRA/DoRA layers.

    Returns:
        The names of the replaced layers.

    Raises:
        ConfigError: bitsandbytes is missing or cannot quantise on the model's device, or quantised a layer
            outside its format's error bound (:func:`check_round_trip`).
    """
    names = quantizable_linears(model)
    device = next(model.parameters()).device
    bnb = require_bitsandbytes(quantization.kind, device)
    for name in names:
        linear = model.get_submodule(name)
        layer = _quantized_layer(bnb, linear, quantization)
        check_round_trip(name, linear.weight, dequantized_weight(layer), quantization.kind)
        model.set_submodule(name, layer)
    model.__dict__["is_loaded_in_4bit" if quantization.kind == "nf4" else "is_loaded_in_8bit"] = True
    model.__dict__["elmtune_quantization"] = quantization
    return names


def base_quantization(model: nn.Module) -> BaseQuantization | None:
    """How ``model`` (or the base inside a ``PeftModel``) was quantised by :func:`quantize_linears` (None if not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.__dict__.get("elmtune_quantization")


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) fp32 weight a bitsandbytes layer computes with (an ``nn.Linear``'s weight as fp32)."""
    weight = layer.weight
    if getattr(weight, "quant_state", None) is not None:  # Params4bit
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, weight.quant_state).float()
    scale = getattr(weight, "SCB", None)
    if scale is None:
        scale = getattr(layer.state, "SCB", None)
    if weight.dtype == torch.int8 and scale is not None:  # Int8Params: row-wise absmax / 127
        return weight.data.float() * (scale.float()[:, None] / 127.0)
    return weight.detach().float()


@torch.no_grad()
def fake_quantize(
    weight: torch.Tensor, kind: str, quantized_from: torch.dtype = torch.float32, name: str = "a weight"
) -> torch.Tensor:
    """``dequant(quant(W))`` in fp32: the weight a ``kind`` base layer holding ``weight`` (out, in) computes with.

    Args:
        weight: The full-precision weight (out, in); any dtype.
        kind: ``nf4`` or ``int8``.
        quantized_from: dtype the weight had when it was quantised (the run's compute dtype).
        name: The weight's name, for the message of :func:`check_round_trip`.

    Raises:
        ConfigError: bitsandbytes is missing, or its round trip is outside ``kind``'s error bound.
    """
    bnb = require_bitsandbytes(kind, "cpu")
    source = weight.detach().to("cpu", quantized_from).contiguous()  # (out, in)
    if kind == "nf4":
        packed, state = bnb.functional.quantize_4bit(
            source, blocksize=NF4_BLOCK_SIZE, compress_statistics=True, quant_type="nf4"
        )
        restored = bnb.functional.dequantize_4bit(packed, state).float()
    else:
        quantized, scale, _ = bnb.functional.int8_vectorwise_quant(source.float())
        restored = quantized.float() * (scale.float()[:, None] / 127.0)
    check_round_trip(name, source, restored, kind, remedy="merge where bitsandbytes quantises it correctly (a GPU)")
    return restored


__all__ = [
    "MIN_BITSANDBYTES",
    "NF4_BLOCK_SIZE",
    "QUANT_KINDS",
    "BaseQuantization",
    "base_quantization",
    "check_round_trip",
    "dequantized_weight",
    "fake_quantize",
    "quantizable_linears",
    "quantize_linears",
    "require_bitsandbytes",
]

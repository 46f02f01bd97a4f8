"""The same-shape transformers Llama for an OpenELM preset, and the FLOPs per token of a LoRA training step.

Llama shape: OpenELM gives every layer its own head count and FFN width (layer-wise scaling); a Llama has one of
each. The peer keeps OpenELM's width (``model_dim``), depth, ``head_dim``, vocabulary and tied embedding, and takes
the *mean over layers* of the query heads, the key-value heads and the FFN width, each rounded to the nearest whole
number that transformers accepts (the query heads divide the width, the key-value heads divide the query heads).
For 270M that is 16 query heads (mean 15.75), 4 key-value heads (mean 3.94) and an FFN width of 2912 (the exact
mean), so the peer's matmul weights are within 2 % of OpenELM's (all of the difference in the attention
projections) and a step does the same work up to that. Llama has no q/k norms; everything else (RMSNorm, rotary,
SwiGLU, grouped-query attention) matches.

FLOPs per token of a LoRA training step with a frozen base, counted as multiply-adds x 2:

    4 * N_base  +  6 * N_adapter  +  12 * T * sum over layers of (query heads x head_dim)

``N_base`` is the matmul weights a token passes through (every layer's qkv, out, proj_1 and proj_2, plus the
vocabulary projection of the tied head): 2 FLOPs each forward and 2 backward for the input gradient; a frozen base
computes no weight gradients. ``N_adapter`` is the adapter's matmul weights (LoRA A and B of every adapted linear,
the B of the embedding; the embedding's A is a lookup): forward, input and weight gradients, 6 each. The last term
is attention (QK^T and AV, 4 T d_q forward and twice that backward per layer, T the sequence length), counted over
the full T x T square as PaLM's formula does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # elmtune is imported only where used: Apple's sides may run without it (``--apple-python``)
    from elmtune.models.geometry import ModelGeometry


@dataclass(frozen=True)
class LlamaShape:
    """The fields of a ``LlamaConfig`` that give the same-shape peer."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int


def preset_geometry(preset: str) -> ModelGeometry:
    """The per-layer geometry of an OpenELM preset."""
    from elmtune.models.geometry import geometry_from_dict
    from elmtune.models.presets import PRESETS

    return geometry_from_dict(PRESETS[preset])


def llama_shape(preset: str) -> LlamaShape:
    """The same-shape Llama of a preset: per-layer means of heads and FFN width (see the module docstring)."""
    geometry = preset_geometry(preset)
    layers = geometry.layers
    query_mean = sum(g.num_query_heads for g in layers) / len(layers)
    kv_mean = sum(g.num_kv_heads for g in layers) / len(layers)
    # transformers' Llama needs the heads to divide the width, and the key-value heads the query heads
    pairs = [(q, kv) for q in range(1, geometry.model_dim + 1) if geometry.model_dim % q == 0 for kv in range(1, q + 1)]
    query_heads, kv_heads = min(
        ((q, kv) for q, kv in pairs if q % kv == 0), key=lambda p: (abs(p[0] - query_mean), abs(p[1] - kv_mean), -p[0])
    )
    return LlamaShape(
        hidden_size=geometry.model_dim,
        num_hidden_layers=len(layers),
        num_attention_heads=query_heads,
        num_key_value_heads=kv_heads,
        head_dim=layers[0].head_dim,
        intermediate_size=round(sum(g.ffn_dim for g in layers) / len(layers)),
        vocab_size=geometry.vocab_size,
    )


def base_matmul_weights(geometry: ModelGeometry) -> int:
    """N_base: the matmul weights one token passes through, the vocabulary projection included."""
    per_layer = sum(
        rows * cols
        for g in geometry.layers
        for rows, cols in (g.qkv_shape, g.out_shape, g.proj_1_shape, g.proj_2_shape)
    )
    return per_layer + geometry.vocab_size * geometry.model_dim


def training_flops_per_token(geometry: ModelGeometry, seq: int, adapter_matmul_weights: int) -> float:
    """FLOPs per token of one LoRA training step on a frozen base (formula in the module docstring)."""
    attention = sum(g.num_query_heads * g.head_dim for g in geometry.layers)
    return 4.0 * base_matmul_weights(geometry) + 6.0 * adapter_matmul_weights + 12.0 * seq * attention


def llama_model(preset: str) -> Any:
    """The same-shape ``LlamaForCausalLM`` of a preset: fp32, random weights (seed 0), tied embedding."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = vars(llama_shape(preset))
    config = LlamaConfig(**fields, tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()

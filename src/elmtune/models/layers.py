"""The layers of one OpenELM decoder block: RMSNorm, rotary embedding, grouped-query attention and the SwiGLU FFN.

Each layer keeps Apple's module names (``attn.qkv_proj``, ``ffn.proj_1``...), so checkpoints keep Apple's keys, and
Apple's numerics: norms and rotary embedding in fp32, cast back to the input dtype.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

from elmtune.models.configuration import OpenELMConfig
from elmtune.models.geometry import NORM_EPS
from elmtune.models.linear import OpenELMLinear


class OpenELMRMSNorm(nn.Module):
    """RMSNorm as OpenELM computes it: statistics in fp32, cast back to the input dtype, then scale.

    ``y = weight * cast_back(x_f32 * rsqrt(mean(x_f32^2) + eps))``; the normalisation is one fused
    ``torch.nn.functional.rms_norm`` call.

    Args:
        num_features: Size of the normalised last dimension.
        eps: Added to the mean square before the square root.
    """

    def __init__(self, num_features: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (..., num_features) over its last dimension; the result has ``x``'s shape and dtype."""
        normed = F.rms_norm(x.float(), (self.num_features,), eps=self.eps)
        return normed.type_as(x) * self.weight

    def extra_repr(self) -> str:
        """The feature count and epsilon, for ``repr(model)``."""
        return f"num_features={self.num_features}, eps={self.eps}"


class OpenELMRotaryEmbedding(nn.Module):
    """Rotate-half RoPE over the full head dimension, with cos/sin tables cached per device.

    The tables are fp32 and plain attributes (not buffers), so meta-device construction, ``to_empty`` and weight
    loading can never leave them stale: they are rebuilt on first use on each device and grow on demand.

    Args:
        head_dim: Size of one attention head (every dimension is rotated).
        base: RoPE frequency base (``rope_freq_constant``).
        max_length: Positions the first table covers (``rope_max_length``).
    """

    def __init__(self, head_dim: int, base: float, max_length: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = float(base)
        self.max_length = max_length
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, device: torch.device, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._tables.get(device)
        if cached is not None and cached[0].shape[0] >= needed:
            return cached
        length = max(self.max_length, needed if cached is None else max(needed, 2 * cached[0].shape[0]))
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.base**exponent)  # (hd/2,)
        angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)  # (T, hd/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, hd)
        self._tables[device] = (angles.cos(), angles.sin())
        return self._tables[device]

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Look up the rotation of each position.

        Args:
            position_ids: (B, L) positions.

        Returns:
            ``(cos, sin)``, each (B, 1, L, hd) in fp32, broadcasting over the heads.
        """
        needed = int(position_ids.max()) + 1 if position_ids.numel() and position_ids.device.type != "meta" else 1
        cos, sin = self._table(position_ids.device, needed)
        return cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE in fp32 and cast back: ``x * cos + rotate_half(x) * sin``.

    Args:
        x: Queries or keys (B, H, L, hd).
        cos: (B, 1, L, hd) fp32, from :class:`OpenELMRotaryEmbedding`.
        sin: (B, 1, L, hd) fp32.

    Returns:
        The rotated tensor, (B, H, L, hd) in ``x``'s dtype.
    """
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).type_as(x)


def sdpa_expands_kv(device: torch.device, dtype: torch.dtype, head_dim: int, masked: bool) -> bool:
    """Whether grouped keys and values are repeated to the query heads before SDPA (instead of ``enable_gqa``).

    A grouped call that SDPA can only run in its math kernel materialises the (B, n_q, L, S) attention weights and
    keeps them for the backward pass; with the heads repeated, a fused kernel takes the call. Which calls fall back
    depends on the torch release and the device: CUDA's fused kernels take ``enable_gqa`` only without a mask (and
    only flash, which needs half precision); the CPU's flash kernel takes it in recent releases (2.13, mask or not)
    and not in older ones (2.6: never). So torch's own kernel choice is asked, once per device, dtype, head size and
    mask (:func:`_gqa_needs_math`). MPS kernels lack grouped-query support in several torch releases: always
    repeated there.

    Args:
        device: Device of the queries.
        dtype: Their dtype.
        head_dim: Their head size.
        masked: Whether this SDPA call gets an explicit ``attn_mask`` (else ``is_causal`` or nothing).
    """
    return device.type == "mps" or _gqa_needs_math(device, dtype, head_dim, masked)


@functools.cache
def _gqa_needs_math(device: torch.device, dtype: torch.dtype, head_dim: int, masked: bool) -> bool:
    """Whether SDPA sends a grouped call to its math kernel where the same call with repeated heads gets a fused one."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None or device.type == "meta":  # no kernel to ask: CUDA's rule, repeat under a mask
        return masked and device.type != "cpu"
    query = torch.zeros(1, 2, 4, head_dim, dtype=dtype, device=device)
    grouped = torch.zeros(1, 1, 4, head_dim, dtype=dtype, device=device)
    repeated = grouped.repeat_interleave(2, dim=1)  # (1, 2, 4, hd), as the attention repeats them
    shape = {"attn_mask": torch.ones(1, 1, 4, 4, dtype=torch.bool, device=device)} if masked else {"is_causal": True}
    math = SDPBackend.MATH
    with_gqa = SDPBackend(choose(query, grouped, grouped, enable_gqa=True, **shape))
    without = SDPBackend(choose(query, repeated, repeated, **shape))
    return with_gqa == math and without != math


class OpenELMMultiHeadCausalAttention(nn.Module):
    """Grouped-query attention of one layer, with its own head counts and per-head q/k RMSNorm.

    Args:
        config: The model config (head counts per layer, head and model widths).
        layer_idx: Index of the decoder layer, which selects its head counts and its slot in the KV cache.
    """

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_q_heads = config.num_query_heads[layer_idx]
        self.num_kv_heads = config.num_kv_heads[layer_idx]
        rows = (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = OpenELMLinear(config.model_dim, rows, bias=False)
        if config.normalize_qk_projections:
            self.q_norm = OpenELMRMSNorm(self.head_dim)
            self.k_norm = OpenELMRMSNorm(self.head_dim)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = OpenELMLinear(self.num_q_heads * self.head_dim, config.model_dim, bias=False)
        self.out_proj.residual_output = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: Cache | None = None,
        segments: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Attend over the sequence (and the cached keys and values).

        Args:
            hidden_states: Normalised layer input (B, L, d).
            rotary: ``(cos, sin)`` of the positions, each (B, 1, L, hd).
            attn_mask: Boolean SDPA mask (B|1, 1, L, past + L), or None (see ``is_causal``).
            is_causal: Let SDPA apply the causal mask itself (only when ``attn_mask`` is None).
            cache: KV cache to extend with this step's keys and values.
            segments: Lengths of the sequences packed into the one row (B = 1, summing to L): each attends
                causally to itself only, one SDPA call each; ``attn_mask`` and ``is_causal`` are then unused.

        Returns:
            The attention output after ``out_proj``, (B, L, d).
        """
        batch, length, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states)  # (B, L, (n_q + 2 n_kv) * hd)
        qkv = qkv.view(batch, length, self.num_q_heads + 2 * self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.num_q_heads, self.num_kv_heads, self.num_kv_heads], dim=1)  # (B, H*, L, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, n_kv, past + L, hd)
        grouped = self.num_q_heads != self.num_kv_heads
        masked = segments is None and attn_mask is not None
        if grouped and sdpa_expands_kv(q.device, q.dtype, self.head_dim, masked):
            repeats = self.num_q_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)  # (B, n_q, S, hd)
            grouped = False
        if segments is not None:
            parts = zip(q.split(segments, dim=2), k.split(segments, dim=2), v.split(segments, dim=2), strict=True)
            out = torch.cat(
                [F.scaled_dot_product_attention(*qkv_s, is_causal=True, enable_gqa=grouped) for qkv_s in parts], dim=2
            )  # (1, n_q, L, hd)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=grouped
            )  # (B, n_q, L, hd)
        out = out.transpose(1, 2).reshape(batch, length, self.num_q_heads * self.head_dim)
        return self.out_proj(out)


class OpenELMFeedForwardNetwork(nn.Module):
    """SwiGLU FFN of one layer: the first half of ``proj_1`` is the gate, the second half the up projection.

    Args:
        config: The model config (FFN width per layer, activation, whether the FFN is gated).
        layer_idx: Index of the decoder layer, which selects its FFN width.
    """

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.ffn_dim = config.ffn_dims[layer_idx]
        self.ffn_with_glu = config.ffn_with_glu
        out_rows = 2 * self.ffn_dim if self.ffn_with_glu else self.ffn_dim
        self.proj_1 = OpenELMLinear(config.model_dim, out_rows, bias=False)
        self.proj_2 = OpenELMLinear(self.ffn_dim, config.model_dim, bias=False)
        self.proj_2.residual_output = True
        self.act = ACT2FN[config.activation_fn_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``proj_2(act(gate) * up)`` (or ``proj_2(act(proj_1(x)))`` without GLU): (B, L, d) -> (B, L, d)."""
        hidden = self.proj_1(x)  # (B, L, 2 * ffn) with GLU
        if self.ffn_with_glu:
            gate, up = hidden.chunk(2, dim=-1)  # (B, L, ffn) each
            hidden = self.act(gate) * up
        else:
            hidden = self.act(hidden)
        return self.proj_2(hidden)


class OpenELMDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``h = x + attn(attn_norm(x))``, ``out = h + ffn(ffn_norm(h))``.

    Args:
        config: The model config.
        layer_idx: Index of the layer in the stack.
    """

    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = OpenELMRMSNorm(config.model_dim)
        self.attn = OpenELMMultiHeadCausalAttention(config, layer_idx)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim)
        self.ffn = OpenELMFeedForwardNetwork(config, layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = True,
        cache: Cache | None = None,
        segments: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Run the block on (B, L, d) hidden states; see :meth:`OpenELMMultiHeadCausalAttention.forward`.

        Args:
            hidden_states: Block input (B, L, d).
            rotary: ``(cos, sin)`` of the positions, each (B, 1, L, hd).
            attn_mask: Boolean SDPA mask, or None.
            is_causal: Let SDPA apply the causal mask (only when ``attn_mask`` is None).
            cache: KV cache to extend.
            segments: Lengths of the sequences packed into the one row, or None.

        Returns:
            Block output (B, L, d).
        """
        attn_in = self.attn_norm(hidden_states)
        hidden_states = hidden_states + self.attn(attn_in, rotary, attn_mask, is_causal, cache, segments)
        return hidden_states + self.ffn(self.ffn_norm(hidden_states))


__all__ = [
    "OpenELMDecoderLayer",
    "OpenELMFeedForwardNetwork",
    "OpenELMMultiHeadCausalAttention",
    "OpenELMRMSNorm",
    "OpenELMRotaryEmbedding",
    "apply_rotary",
]

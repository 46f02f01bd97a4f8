"""Fast DoRA as a peft LoRA variant, and the LoRA layer classes elmtune registers with peft.

DoRA rescales every output row of the adapted weight ``W + s·B·A`` to a learned magnitude ``m``::

    out = base(x) + (m / ||W + sBA|| - 1) * base(x) + (m / ||W + sBA||) * s * B(A(dropout(x)))
        = bias + (m / ||W + sBA||) * (x·Wᵀ + s * B(A(dropout(x))))

with the row norm ``||W + sBA||`` detached from the graph (DoRA paper §4.3). This is Apple CoreNet's formulation:
under dropout the base output is reused, whereas peft's stock DoRA recomputes ``dropout(x)·Wᵀ`` (a second base matmul,
about 1.7x LoRA's step time). Without dropout, or in eval mode, both are exactly DoRA.

The row norm is computed without forming the (out, in) update matrix::

    ||W + sBA||²_i = ||W_i||² + 2s · B_i·(W·Aᵀ)_i + s² · B_i·(A·Aᵀ)·B_iᵀ

``||W_i||²`` is cached while the frozen base weight is unchanged, so a training step costs one (out, in, r) matmul and
a few (out, r) operations on top of LoRA. With a bf16/fp16 base, ``W·Aᵀ`` runs in the base dtype (fp32 accumulation
on GPU) and the rest in fp32.

The magnitude is stored exactly where peft stores it (``lora_magnitude_vector``), so plain peft loads these adapters
and gives the same eval outputs; merging uses peft's DoRA merge.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Embedding as PeftLoraEmbedding
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.variants import DoraLinearVariant
from torch import nn

from elmtune.adapters.lora_forward import plain_lora_adapter, plain_lora_forward

_WSQ_KEY = "elmtune-dora-wsq"
_NORM_KEY = "elmtune-dora-norm"


def _base_weight(module: PeftLoraLinear) -> torch.Tensor:
    """The base weight as (out, in), whatever the base layer's storage layout (Conv1D stores (in, out))."""
    weight = module.get_base_layer().weight
    return weight.T if module.fan_in_fan_out else weight


def _tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)


def base_row_sq_norms(module: PeftLoraLinear) -> torch.Tensor:
    """``||W_i||²`` per output row in fp32 (out,), cached while the base weight is unchanged."""
    weight = _base_weight(module)
    key = _tensor_key(weight)
    cached = module._caches.get(_WSQ_KEY)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        wsq = torch.linalg.vector_norm(weight, dim=1, dtype=torch.float32).square()  # (out,)
    module._caches[_WSQ_KEY] = (key, wsq)
    return wsq


def dora_row_norm(module: PeftLoraLinear, adapter: str) -> torch.Tensor:
    """Detached ``||W + s·B·A||`` per output row (out,), in the adapter's dtype.

    In eval mode without autograd the result is cached until the adapter or base weights change (generation does
    not recompute it for every token).
    """
    lora_a = module.lora_A[adapter].weight  # (r, in)
    lora_b = module.lora_B[adapter].weight  # (out, r)
    scaling = module.scaling[adapter]
    cache_ok = not torch.is_grad_enabled() and not module.training
    key = (adapter, _tensor_key(lora_a), _tensor_key(lora_b), _tensor_key(_base_weight(module)), scaling)
    if cache_ok:
        cached = module._caches.get(_NORM_KEY)
        if cached is not None and cached[0] == key:
            return cached[1]
    weight = _base_weight(module)
    with torch.no_grad():
        wsq = base_row_sq_norms(module)  # (out,)
        a = lora_a.to(weight.dtype) if weight.dtype in (torch.float16, torch.bfloat16) else lora_a
        w_at = (weight.to(a.dtype) @ a.T).to(lora_b.dtype)  # (out, in) @ (in, r) -> (out, r)
        cross = (lora_b * w_at).sum(dim=1)  # (out,)
        gram = lora_a @ lora_a.T  # (r, r)
        bab = ((lora_b @ gram) * lora_b).sum(dim=1)  # (out,)
        norm = (wsq + 2 * scaling * cross + scaling**2 * bab).clamp_min(0).sqrt()  # (out,)
    if cache_ok:
        module._caches[_NORM_KEY] = (key, norm)
    return norm


class FastDoraLinearVariant(DoraLinearVariant):
    """peft's DoRA variant with a forward that reuses the base output under dropout (see module docstring).

    Initialisation (magnitude = row norms of ``W + sBA``), merge and unmerge are peft's.
    """

    @staticmethod
    def forward(
        module: PeftLoraLinear,
        active_adapter: str,
        x: torch.Tensor,
        result: torch.Tensor,
        **kwargs: Any,
    ) -> torch.Tensor:
        """DoRA output (not just the update) for one adapter.

        Args:
            module: The LoRA layer.
            active_adapter: Adapter name.
            x: Layer input (..., in), already cast to the adapter dtype.
            result: Output so far (..., out): the base output (plus earlier adapters), bias included.
            **kwargs: Unused (peft's variant keyword arguments).

        Returns:
            (..., out) tensor.
        """
        lora_a = module.lora_A[active_adapter]
        lora_b = module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        scaling = module.scaling[active_adapter]
        magnitude = module.lora_magnitude_vector[active_adapter].weight  # (out,)
        scale = magnitude / dora_row_norm(module, active_adapter)  # (out,); gradient reaches m only
        bias = module.get_base_layer().bias
        base_out = result if bias is None else result - bias  # (..., out)
        hidden = lora_a(dropout(x))  # (..., in) -> (..., r)
        if lora_b.bias is not None:  # peft's lora_bias: B is affine, its rows cannot absorb the scale
            out = scale * (base_out + scaling * lora_b(hidden))  # (..., out)
        else:
            out = _scaled_sum(base_out, scale, hidden, lora_b.weight, scaling)  # (..., out)
        return out if bias is None else out + bias


def _scaled_sum(
    base_out: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor, lora_b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``scale * (base_out + scaling * hidden·Bᵀ)`` with the update's row scale folded into B.

    The (out, r) matrix ``(scale · scaling) ⊙ B`` takes the scale, and the update is accumulated into the scaled base
    output by the matmul itself (``addmm``), so of the (..., out) elementwise work only ``scale * base_out`` is left:
    per adapted layer, one full-size product instead of two products and a sum in the forward pass, and one
    product fewer in the backward pass.

    Args:
        base_out: The base layer's output without bias (..., out).
        scale: ``m / ||W + sBA||`` per output row (out,).
        hidden: The LoRA A output ``A(dropout(x))`` (..., r).
        lora_b: The LoRA B weight (out, r).
        scaling: The LoRA scaling ``s``.

    Returns:
        The DoRA output without bias (..., out).
    """
    scaled_base = scale * base_out  # (..., out)
    scaled_b = (scale * scaling).unsqueeze(1) * lora_b  # (out, r)
    dtype = torch.promote_types(scaled_base.dtype, hidden.dtype)
    rows = scaled_base.reshape(-1, scaled_base.shape[-1]).to(dtype)  # (N, out)
    out = torch.addmm(rows, hidden.reshape(-1, hidden.shape[-1]).to(dtype), scaled_b.T.to(dtype))  # (N, out)
    return out.view(scaled_base.shape)


class ElmLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear with :class:`FastDoraLinearVariant` for DoRA and plain LoRA's update added by ``addmm``.

    Everything else (the LoRA math, keys, merging) is peft's.
    """

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The layer output (..., out): :func:`plain_lora_forward` where it applies, else peft's forward.

        Args:
            x: Input (..., in).
            *args: Passed to peft's forward.
            **kwargs: Passed to peft's forward (``adapter_names`` and variant arguments).

        Returns:
            (..., out) tensor.
        """
        adapter = plain_lora_adapter(self, x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        return plain_lora_forward(self, adapter, x)

    @property
    def lora_variants(self) -> dict[tuple[str, ...], Any]:
        """The peft variant table, with DoRA served by :class:`FastDoraLinearVariant`."""
        variants = dict(super().lora_variants)
        variants[("use_dora",)] = FastDoraLinearVariant
        return variants

    def _clear_dora_caches(self) -> None:
        """Drop the cached base row norms and DoRA row norms (the weights they were computed from change)."""
        self._caches.pop(_WSQ_KEY, None)
        self._caches.pop(_NORM_KEY, None)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merge into the base weight (peft's merge), with the DoRA norm caches cleared around it.

        Args:
            safe_merge: Check the merged weight for NaN/inf before writing it (peft's option).
            adapter_names: Adapters to merge (default: the active ones).
        """
        self._clear_dora_caches()
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
        self._clear_dora_caches()

    def unmerge(self) -> None:
        """Unmerge from the base weight (peft's unmerge), with the DoRA norm caches cleared around it."""
        self._clear_dora_caches()
        super().unmerge()
        self._clear_dora_caches()

    def train(self, mode: bool = True) -> ElmLoraLinear:
        """Switch train/eval mode; the eval-only DoRA row-norm cache is dropped.

        Args:
            mode: True for training, False for evaluation.

        Returns:
            This layer.
        """
        self._caches.pop(_NORM_KEY, None)
        return super().train(mode)


class ElmLoraConv1D(ElmLoraLinear):
    """:class:`ElmLoraLinear` for transformers ``Conv1D`` (GPT-2 style, weight stored (in, out))."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> None:
        kwargs["is_target_conv_1d_layer"] = True
        super().__init__(base_layer, adapter_name, config=config, **kwargs)


class ElmLoraEmbedding(PeftLoraEmbedding):
    """peft's LoRA Embedding, always plain LoRA: DoRA on ``token_embeddings`` falls back to LoRA (as in CoreNet)."""

    @property
    def lora_variants(self) -> dict[tuple[str, ...], Any]:
        """The peft variant table without DoRA, so a DoRA config gives this embedding plain LoRA."""
        variants = dict(super().lora_variants)
        variants[("use_dora",)] = None
        return variants


def custom_module_mapping() -> dict[type[nn.Module], type[nn.Module]]:
    """Base layer type -> elmtune LoRA layer, for ``LoraConfig._register_custom_module``."""
    from transformers.pytorch_utils import Conv1D

    return {nn.Linear: ElmLoraLinear, nn.Embedding: ElmLoraEmbedding, Conv1D: ElmLoraConv1D}


__all__ = [
    "ElmLoraConv1D",
    "ElmLoraEmbedding",
    "ElmLoraLinear",
    "FastDoraLinearVariant",
    "custom_module_mapping",
    "dora_row_norm",
]

"""Plain LoRA's forward pass with the update added by the matmul itself.

peft computes a LoRA layer as ``result + lora_B(lora_A(dropout(x))) * scaling``: B's output, its scaled copy and the
sum are three (..., out) tensors per adapted layer in the forward pass, and the scaling costs another (..., out)
product in the backward pass. On a CPU those full-size tensors are mostly fresh memory, paid for in page faults.
Here the scaling goes into B, an (out, r) matrix, and ``addmm`` adds ``hidden · (s·B)ᵀ`` to the base output::

    out = result + s · B(A(dropout(x)))  =  addmm(result, A(dropout(x)), (s·B)ᵀ)

one (..., out) tensor instead of three, the same sum up to fp32 rounding. The fast path serves the common case only
(one active adapter, not merged, no variant such as DoRA, no LoRA bias, no per-call keyword arguments, input already
in the adapter's dtype); everything else runs peft's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as PeftLoraLinear


def plain_lora_adapter(
    layer: PeftLoraLinear, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | None:
    """The adapter :func:`plain_lora_forward` computes for this call, or None where peft's forward must run.

    Args:
        layer: The LoRA layer.
        x: Its input (..., in).
        args: Extra positional arguments of the call (the fast path takes none).
        kwargs: Keyword arguments of the call (the fast path takes none: ``adapter_names`` and variant arguments
            need peft's forward).

    Returns:
        The one active adapter's name, or None.
    """
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    (adapter,) = active
    if adapter in layer.lora_variant or layer.lora_B[adapter].bias is not None:
        return None
    if x.dtype != layer.lora_A[adapter].weight.dtype:  # peft casts the input first; keep its path for that
        return None
    return adapter


def plain_lora_forward(layer: PeftLoraLinear, adapter: str, x: torch.Tensor) -> torch.Tensor:
    """``base(x) + scaling · B(A(dropout(x)))`` with the sum done by ``addmm`` (see the module docstring).

    Args:
        layer: The LoRA layer.
        adapter: The adapter to add (from :func:`plain_lora_adapter`).
        x: The layer input (..., in).

    Returns:
        (..., out) in the base output's dtype, as peft returns it.
    """
    result = layer.base_layer(x)  # (..., out)
    hidden = layer.lora_A[adapter](layer.lora_dropout[adapter](x))  # (..., r)
    scaling = layer.scaling[adapter]
    weight_b = layer.lora_B[adapter].weight  # (out, r)
    if scaling != 1:
        weight_b = weight_b * scaling
    if result.dtype != hidden.dtype:  # a base computing in another dtype: peft's promotion, then its dtype back
        return (result + F.linear(hidden, weight_b)).to(result.dtype)
    rows = result.reshape(-1, result.shape[-1])  # (N, out)
    out = torch.addmm(rows, hidden.reshape(-1, hidden.shape[-1]), weight_b.T)  # (N, out)
    return out.view(result.shape)

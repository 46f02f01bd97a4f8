"""OpenELM's Linear layer: ``x W^T`` computed as ``(W x^T)^T`` where every CPU it was measured on runs that faster.

A Linear layer is ``torch.mm(x, W.t())``. On the CPU (MKL) that order is slow for some row counts: the other order,
``torch.mm(W, x.t()).t()`` copied back to row-major, is the same product up to float rounding and, for OpenELM's
weights (1,024 or more rows and columns), ran faster with 8 to 32 rows on both CPUs it was measured on: 1.45-1.84x
on an AVX2 AMD EPYC, 1.30-1.39x on an AVX-512 Intel Xeon (the 270M model's weights; a decoding step of 16 sequences
has 16 rows). Outside that range the CPUs disagree, so elmtune keeps ``F.linear``: with 2 rows the reordered product
was 1.76x on the AMD but 0.54x on the Intel, with 64-128 rows 1.20-1.34x against 0.90x, and for narrow weights (128
to 256 features) it was slower on both. ``benchmarks/linear_order.py`` measures both orders on the machine at hand;
``benchmarks/README.md`` (§ Profiles) has the figures.

The reordered product is used only where it was measured to pay on every CPU: CPU, fp32, a weight of at least
:data:`MIN_REORDERED_FEATURES` rows and columns, :data:`MIN_REORDERED_ROWS` to :data:`MAX_REORDERED_ROWS` input rows,
and no gradient to record: in practice generation's decoding steps of 8 to 32 sequences and the output head over a
scoring batch's few target positions. Training keeps ``F.linear``, as does every other device, dtype, shape and row
count.

:class:`OpenELMLinear` is an ``nn.Linear`` (same parameters, keys, ``isinstance``), so peft wraps it, bitsandbytes
replaces it and checkpoints load into it exactly as into ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The fewest rows (tokens) of an input for which :func:`linear` reorders the product.
MIN_REORDERED_ROWS = 8
#: The most rows (tokens) of an input for which :func:`linear` reorders the product.
MAX_REORDERED_ROWS = 32
#: The fewest output and input features of a weight that :func:`linear` reorders the product for.
MIN_REORDERED_FEATURES = 1024


def reorders(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` computes ``x W^T`` as ``(W x^T)^T``.

    True on the CPU, in fp32, for a weight with at least :data:`MIN_REORDERED_FEATURES` rows and columns, an input
    of :data:`MIN_REORDERED_ROWS` to :data:`MAX_REORDERED_ROWS` rows, and nothing to differentiate.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if weight.dim() != 2 or min(weight.shape) < MIN_REORDERED_FEATURES:
        return False
    if not MIN_REORDERED_ROWS <= x.numel() // max(1, x.shape[-1]) <= MAX_REORDERED_ROWS:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


def reordered_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T + b`` computed as ``(W x^T)^T``, copied back to row-major, whatever the shape or device.

    Args:
        x: Input (..., in).
        weight: Weight (out, in).
        bias: Optional bias (out,).

    Returns:
        (..., out), contiguous.
    """
    rows = x.reshape(-1, x.shape[-1])  # (M, in)
    out = torch.mm(weight, rows.t()).t().contiguous()  # (out, M) -> (M, out), row-major
    if bias is not None:
        out = out + bias  # (M, out)
    return out.view(*x.shape[:-1], weight.shape[0])  # (..., out)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, in the operand order that runs faster (see the module docstring).

    Args:
        x: Input (..., in).
        weight: Weight (out, in).
        bias: Optional bias (out,).

    Returns:
        (..., out).
    """
    if reorders(x, weight):
        return reordered_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class OpenELMLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear`: the same parameters and keys, a faster CPU inference path.

    ``residual_output`` marks a projection that writes into the residual stream (``out_proj``, ``proj_2``), which
    Apple's initialisation draws with a smaller std.
    """

    residual_output: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b``: (..., in) -> (..., out)."""
        return linear(x, self.weight, self.bias)


__all__ = [
    "MAX_REORDERED_ROWS",
    "MIN_REORDERED_FEATURES",
    "MIN_REORDERED_ROWS",
    "OpenELMLinear",
    "linear",
    "reordered_linear",
    "reorders",
]

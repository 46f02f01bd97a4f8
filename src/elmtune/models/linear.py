"""OpenELM's Linear layer: ``x W^T`` computed as ``(W x^T)^T`` where the CPU's BLAS runs that order faster.

A Linear layer is ``torch.mm(x, W.t())``. On the CPU (MKL) that order is slow when ``x`` has a few rows: for the 270M
model's weights, the other order, ``torch.mm(W, x.t()).t()`` copied back to row-major, ran 2.6-2.8x faster with 4
rows, 1.5-1.6x with 16 (a decoding step of 16 sequences) and 1.3x with 64, the same product up to float rounding. With
one row both orders are the same matrix-vector product, and from about 256 rows on the usual order is as fast or
faster. ``benchmarks/linear_order.py`` measures both orders on the machine at hand; ``benchmarks/README.md``
(§ Profiles) has the figures.

The reordered product is used only where it was measured to pay: CPU, fp32, 2 to :data:`MAX_REORDERED_ROWS` rows,
and no gradient to record: in practice generation's decoding steps (one row per sequence) and the output head over
the few target positions a scoring batch needs. Training keeps ``F.linear``, as does every other device, dtype and
row count.

:class:`OpenELMLinear` is an ``nn.Linear`` (same parameters, keys, ``isinstance``), so peft wraps it, bitsandbytes
replaces it and checkpoints load into it exactly as into ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The most rows (tokens) of an input for which :func:`linear` reorders the product.
MAX_REORDERED_ROWS = 128


def reorders(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` computes ``x W^T`` as ``(W x^T)^T``: CPU, fp32, 2-128 rows, nothing to differentiate."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not 2 <= x.numel() // max(1, x.shape[-1]) <= MAX_REORDERED_ROWS:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, in the operand order that runs faster (see the module docstring).

    Args:
        x: Input (..., in).
        weight: Weight (out, in).
        bias: Optional bias (out,).

    Returns:
        (..., out), contiguous.
    """
    if not reorders(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # (M, in)
    out = torch.mm(weight, rows.t()).t().contiguous()  # (out, M) -> (M, out), row-major
    if bias is not None:
        out = out + bias  # (M, out)
    return out.view(*x.shape[:-1], weight.shape[0])  # (..., out)


class OpenELMLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear`: the same parameters and keys, a faster CPU inference path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b``: (..., in) -> (..., out)."""
        return linear(x, self.weight, self.bias)


__all__ = ["MAX_REORDERED_ROWS", "OpenELMLinear", "linear", "reorders"]

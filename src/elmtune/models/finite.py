"""Refusing non-finite numbers: a run or an evaluation that met NaN or inf stops with one line instead of going on."""

from __future__ import annotations

import torch
from torch import nn

from elmtune.errors import ElmtuneError


class NonFiniteError(ElmtuneError):
    """A loss, gradient, weight or score is NaN or infinite."""


def non_finite_parameters(model: nn.Module, trainable_only: bool = False) -> list[str]:
    """Names of the parameters of ``model`` that hold a NaN or an infinity (each shared tensor checked once)."""
    found, seen = [], set()
    for name, param in model.named_parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad) or param.device.type == "meta":
            continue
        seen.add(id(param))
        if not bool(torch.isfinite(param.detach()).all()):
            found.append(name)
    return found


def require_finite_parameters(model: nn.Module, what: str, trainable_only: bool = False) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite parameter of ``model``.

    Args:
        model: The model (or adapter-wrapped model) to check.
        what: What the model is, for the message (e.g. ``"adapter runs/x/final"``).
        trainable_only: Check only parameters with ``requires_grad`` (the adapter of a training run).
    """
    bad = non_finite_parameters(model, trainable_only=trainable_only)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteError(
            f"{what} holds NaN or infinite weights ({bad[0]}{more}); it cannot be used. Retrain it (a lower learning "
            "rate usually avoids divergence)"
        )


__all__ = ["NonFiniteError", "non_finite_parameters", "require_finite_parameters"]

"""The unmerged reference: an adapter applied beside the base weights through forward hooks, never merged into them.

This is what a merge is checked against. Each adapted module keeps its base weight ``W`` and gets its update from the
low-rank factors, as peft computes it when the adapter is not merged (``s = alpha / r``, ``alpha / sqrt(r)`` with
rsLoRA)::

    LoRA Linear    y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ                                 on the module's rows (sub-projections)
    DoRA Linear    y = m / ||W + s·B·A||_row * (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)
    LoRA Embedding e = W[ids] + s·Aᵀ[ids]·Bᵀ                               (A: r x vocab, B: d x r)

A bias is left out of DoRA's scaling, as peft does; GPT-2's Conv1D weights are stored transposed (``fan_in_fan_out``).

The DoRA row norm uses ``||W_i||² + 2s·B_i·(W·Aᵀ)_i + s²·B_i·(A·Aᵀ)·B_iᵀ``, so ``W + s·B·A`` is never formed.

The output head needs a decision when the embedding is adapted and tied to the head. Apple's unmerged model reads the
*base* embedding as its head; a merged tied checkpoint necessarily uses the *adapted* embedding for both. With
``adapted_head=True`` the reference's head is the adapted embedding too (``logits = h·Wᵀ + s·(h·B)·A``): the model
a tied merge must equal. With ``adapted_head=False`` it is Apple's unmerged model, which an untied merge equals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from elmtune.adapters.config import AdapterError
from elmtune.merging.adapter import AdapterTarget, ParsedAdapter


def _dora_row_norm(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """||W + s·B·A|| per row without forming the sum. weight (out, in), a (r, in), b (out, r) -> (out,)."""
    w_sq = weight.square().sum(dim=1)  # (out,)
    cross = (b * (weight @ a.T)).sum(dim=1)  # (out, r) . (out, r) -> (out,)
    gram = (b @ (a @ a.T) * b).sum(dim=1)  # (out,)
    return (w_sq + 2 * scale * cross + scale**2 * gram).clamp_min(0).sqrt()


def _linear_hook(
    rows: tuple[int, int] | None,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    magnitude: torch.Tensor | None,
    fan_in_fan_out: bool = False,
) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor]:
    def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        x = args[0]  # (..., in)
        start, stop = rows if rows is not None else (0, out.shape[-1])
        update = scale * F.linear(F.linear(x, a), b)  # (..., r) -> (..., rows)
        block = out[..., start:stop] + update  # (..., rows)
        if magnitude is not None:
            weight = module.weight.T if fan_in_fan_out else module.weight  # (out, in)
            norm = _dora_row_norm(weight[start:stop], a, b, scale)  # (rows,)
            bias = getattr(module, "bias", None)
            if bias is None:
                block = (magnitude / norm) * block
            else:  # DoRA scales the weight, not the bias
                bias = bias[start:stop]  # (rows,)
                block = (magnitude / norm) * (block - bias) + bias
        out = out.clone()
        out[..., start:stop] = block
        return out

    return hook


class _EmbeddingAdapter:
    """LoRA (or plain peft's DoRA) on the token embedding, and optionally on the tied head that reads it."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float, magnitude: torch.Tensor | None) -> None:
        self.a, self.b, self.scale, self.magnitude = a, b, scale, magnitude  # a (r, vocab), b (d, r)
        self.hidden: torch.Tensor | None = None

    def column_scale(self, weight: torch.Tensor) -> torch.Tensor | None:
        """DoRA's column scale (peft's embedding): m / ||W + s·(B·A)ᵀ|| per embedding dimension (d,); None for LoRA."""
        if self.magnitude is None:
            return None
        adapted = weight + self.scale * (self.b @ self.a).T  # (vocab, d)
        return self.magnitude / adapted.norm(dim=0)

    def embedding_hook(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        ids = args[0]  # (B, L)
        out = out + self.scale * (F.embedding(ids, self.a.T) @ self.b.T)  # (B, L, r) @ (r, d) -> (B, L, d)
        scale = self.column_scale(module.weight)
        return out if scale is None else out * scale

    def norm_hook(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        self.hidden = out  # (B, L, d): the final hidden states the head reads

    def head_hook(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if self.hidden is None or output.logits.shape[:-1] != self.hidden.shape[:-1]:
            raise AdapterError("the reference head needs the logits of every position (logits_to_keep=0)")
        weight = model.transformer.token_embeddings.weight  # (vocab, d), the base embedding
        scale = self.column_scale(weight)
        hidden = self.hidden if scale is None else self.hidden * scale  # (B, L, d)
        logits = F.linear(hidden, weight) + self.scale * ((hidden @ self.b) @ self.a)  # (B, L, vocab)
        output.logits = logits.to(output.logits.dtype)
        self.hidden = None
        return output


def _embedding_hooks(
    model: nn.Module, embedding: nn.Module, target: AdapterTarget, adapted_head: bool, device: str | torch.device
) -> list[RemovableHandle]:
    """Hooks of an embedding adapter: on the embedding, and on the tied head when it reads the adapted embedding."""
    a, b = target.a.to(device), target.b.to(device)  # fp32 (r, vocab), (d, r)
    magnitude = None if target.magnitude is None else target.magnitude.to(device)
    adapter = _EmbeddingAdapter(a, b, target.scale, magnitude)
    handles = [embedding.register_forward_hook(adapter.embedding_hook)]
    if adapted_head and model.head_is_tied:
        handles.append(model.transformer.norm.register_forward_hook(adapter.norm_hook))
        handles.append(model.register_forward_hook(adapter.head_hook, with_kwargs=True))
    return handles


def attach_unmerged_adapter(
    model: nn.Module, adapter: ParsedAdapter, *, adapted_head: bool, device: str | torch.device = "cpu"
) -> list[RemovableHandle]:
    """Hook an adapter onto a plain OpenELM model so that it computes the unmerged adapted model.

    Trained norms saved with the adapter are not hooked: load them into the model's weights instead.

    Args:
        model: An ``OpenELMForCausalLM`` (or another transformers causal LM) without adapters; its weights may be
            materialised later, e.g. per layer.
        adapter: The parsed adapter.
        adapted_head: With a tied head and an embedding adapter, let the head read the adapted embedding (see the
            module docstring); ignored otherwise.
        device: Where the adapter factors live (the model's device).

    Returns:
        The hook handles (call ``remove()`` on each to detach).

    Raises:
        AdapterError: An adapted module the model does not have.
    """
    handles: list[RemovableHandle] = []
    for target in adapter.targets:
        try:
            target_module = model.get_submodule(target.key.removesuffix(".weight"))
        except AttributeError:
            raise AdapterError(f"adapter module {target.module} has no counterpart {target.key} in the model") from None
        if target.embedding:
            handles += _embedding_hooks(model, target_module, target, adapted_head, device)
            continue
        magnitude = None if target.magnitude is None else target.magnitude.to(device)
        a, b = target.a.to(device), target.b.to(device)  # (r, in), (out, r)
        hook = _linear_hook(target.rows, a, b, target.scale, magnitude, adapter.fan_in_fan_out)
        handles.append(target_module.register_forward_hook(hook))
    return handles


__all__ = ["attach_unmerged_adapter"]

"""Logits only where a loss needs them: the positions that predict a target token.

A causal LM's vocabulary projection and the fp32 log-softmax over it cost a ``(B, L, V)`` tensor per micro-batch
(4 x 256 x 32,000 fp32 values are 131 MB, and the backward pass holds several). Supervised fine-tuning on
prompt/response data only scores the response, so the loss asks the model for the logits of the positions where any
row of the batch has a target (transformers' ``logits_to_keep`` with an index tensor) and gathers the matching
targets. The loss is the same sum over the same target tokens; only the unused rows of the projection are skipped.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from elmtune.datasets.encoding import IGNORE_INDEX


def _innermost(model: nn.Module) -> nn.Module:
    """The model under distributed and peft wrappers (the one whose ``forward`` takes ``logits_to_keep``)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def keeps_logits_subset(model: nn.Module) -> bool:
    """Whether ``model``'s forward accepts ``logits_to_keep`` (transformers' causal LMs since 4.50 do)."""
    return "logits_to_keep" in inspect.signature(type(_innermost(model)).forward).parameters


def target_logits(model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the positions that predict a target in some row, and the targets they predict.

    Args:
        model: A causal LM (possibly wrapped by peft or DistributedDataParallel).
        inputs: The forward inputs (``input_ids``, ``attention_mask``...), without ``use_cache``.
        labels: (B, L) token ids aligned with ``input_ids``; -100 where a position is not a target.

    Returns:
        ``(logits, targets)``: (B, K, V) logits in the model's dtype and (B, K) targets (-100 where that row has no
        target at that position), for the K positions t < L - 1 where some row's token t + 1 is a target. A model
        whose forward has no ``logits_to_keep`` gives all L - 1 positions.
    """
    targets = labels[:, 1:]  # (B, L-1): position t predicts token t + 1
    if not keeps_logits_subset(model):
        logits = model(**inputs, use_cache=False).logits  # (B, L, V)
        return logits[:, :-1], targets
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)  # (K,)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (B, K, V)
    return logits, targets[:, keep]


def target_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each row's targets, from logits already aligned with them.

    Args:
        logits: (N, K, V) logits; position k predicts ``targets[:, k]``.
        targets: (N, K) token ids, -100 where a position is not a target; or (N, K, C): C targets per position
            (the branches of :class:`elmtune.finetune.shared_prompt.SharedPromptPairs`), scored from the same
            log-softmax.

    Returns:
        ``(logps, counts)``, each (N,), or (N, C) for (N, K, C) targets.
    """
    mask = targets != IGNORE_INDEX  # (N, K[, C])
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (N, K, V)
    index = targets.clamp(min=0)
    if targets.dim() == 2:
        picked = logprobs.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # (N, K)
    else:
        picked = logprobs.gather(-1, index)  # (N, K, C)
    # Summed in fp64 (MPS has none: fp32 there), so a row's sum does not depend on how many positions the batch
    # kept (the reduction order of an fp32 sum does): precomputed and on-the-fly reference log-probs agree.
    wide = torch.float32 if picked.device.type == "mps" else torch.float64
    return (picked.to(wide) * mask).sum(1).float(), mask.sum(1)

"""Training objectives: what the one training loop minimises.

An objective turns a batch into a *sum* of per-item losses plus the number of items it summed over (target tokens
for SFT). The loop divides by the item count of the whole optimizer step, over all micro-batches and processes, so
gradient accumulation and data parallelism give exactly the large-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


@dataclass
class ObjectiveOutput:
    """A micro-batch's summed loss and what to log.

    Attributes:
        loss_sum: Sum of per-item losses (a scalar tensor with grad).
        metrics: Extra summed quantities to log, divided by the step's item count (e.g. ``z_loss``).
    """

    loss_sum: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Objective(Protocol):
    """What :func:`elmtune.finetune.loop.train` needs from a loss."""

    name: str

    def count(self, batch: dict[str, Any]) -> int:
        """Items the loss of ``batch`` is summed over (known before the forward pass)."""
        ...

    def tokens(self, batch: dict[str, Any]) -> int:
        """Tokens the model processes for ``batch`` (for throughput)."""
        ...

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput: ...


@dataclass(frozen=True)
class SFTObjective:
    """Next-token cross-entropy over target tokens (labels != -100), plus an optional z-loss.

    ``z_loss`` adds ``coef * logsumexp(logits)^2`` per target token (Apple's PEFT recipe uses 1e-4); it keeps the
    softmax normaliser near 1.
    """

    z_loss: float = 0.0
    name: str = "sft"

    def count(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def tokens(self, batch: dict[str, Any]) -> int:
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            return int(mask.sum())
        return int(batch["input_ids"].numel())

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if batch.get(k) is not None}
        logits = model(**inputs, use_cache=False).logits  # (B, L, V)
        logits = logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1
        targets = batch["labels"][:, 1:]
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        metrics = {"ce": ce.detach()}
        loss = ce
        if self.z_loss:
            mask = (targets != IGNORE_INDEX).float()
            z = (torch.logsumexp(logits, dim=-1).pow(2) * mask).sum()
            loss = loss + self.z_loss * z
            metrics["z_loss"] = (self.z_loss * z).detach()
        return ObjectiveOutput(loss_sum=loss, metrics=metrics)


def build_objective(name: str, **settings: Any) -> Objective:
    """The objective called ``name`` (``sft``) with its settings.

    Raises:
        ValueError: An unknown objective.
    """
    if name == "sft":
        return SFTObjective(z_loss=float(settings.get("z_loss", 0.0)))
    raise ValueError(f"unknown objective {name!r}")

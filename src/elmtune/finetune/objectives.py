"""Training objectives: what the one training loop minimises.

An objective turns a batch into a *sum* of per-item losses plus the number of items it summed over (target tokens
for SFT). The loop divides by the item count of the whole optimizer step, over all micro-batches and processes, so
gradient accumulation and data parallelism give exactly the large-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

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


PreferenceLoss = Literal["sigmoid", "hinge", "ipo"]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the target tokens of each row, and the number of target tokens.

    Args:
        logits: (N, L, V) logits; position t predicts token t + 1.
        labels: (N, L) token ids with -100 on positions that are not targets.

    Returns:
        ``(logps, counts)``, each (N,).
    """
    targets = labels[:, 1:]  # (N, L-1)
    mask = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (N, L-1, V)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, L-1)
    return (picked * mask).sum(-1), mask.sum(-1)


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    loss_type: PreferenceLoss,
    beta: float,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair preference losses from policy/reference log-ratios ``log pi(y|x) - log pi_ref(y|x)``.

    - ``sigmoid`` (DPO): ``-log sigmoid(beta * (r_c - r_r))``
    - ``hinge`` (RSO / SLiC; ``beta`` is the inverse margin): ``max(0, 1 - beta * (r_c - r_r))``
    - ``ipo``: ``(r_c / n_c - r_r / n_r - 1 / (2 beta))^2`` with log-ratios averaged over each response's tokens

    Args:
        chosen_logratios: (B,) summed log-ratios of the chosen responses.
        rejected_logratios: (B,) summed log-ratios of the rejected responses.
        loss_type: ``sigmoid``, ``hinge`` or ``ipo``.
        beta: Temperature (DPO), inverse margin (hinge) or regularisation (IPO).
        chosen_tokens: (B,) target tokens per chosen response (IPO only).
        rejected_tokens: (B,) target tokens per rejected response (IPO only).

    Returns:
        (B,) losses.
    """
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the token counts of both responses")
        averaged = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
        return (averaged - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown preference loss {loss_type!r}; use sigmoid, hinge or ipo")


@dataclass(frozen=True)
class PreferenceObjective:
    """Preference optimisation on (prompt, chosen, rejected) pairs: DPO, hinge or IPO.

    The reference model is the policy with its adapters switched off (no second copy of the weights); its
    log-probabilities are computed without gradients in the same step. Apple's OpenELM-Instruct recipe used
    ``hinge`` (270M, 450M, 3B) and ``sigmoid`` (1.1B) with beta 0.01.
    """

    loss_type: PreferenceLoss = "sigmoid"
    beta: float = 0.1
    name: str = "dpo"

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["chosen_input_ids"].shape[0])

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        from elmtune.adapters import disable_adapters

        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, L)
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        logps, counts = sequence_logps(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, labels)
        peft_model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        with torch.no_grad(), disable_adapters(peft_model):
            ref_logps, _ = sequence_logps(
                peft_model(input_ids=ids, attention_mask=mask, use_cache=False).logits, labels
            )
        ratios = logps - ref_logps  # (2B,)
        chosen, rejected = ratios.chunk(2)
        n_chosen, n_rejected = counts.chunk(2)
        losses = preference_loss(chosen, rejected, self.loss_type, self.beta, n_chosen, n_rejected)
        rewards_chosen, rewards_rejected = self.beta * chosen.detach(), self.beta * rejected.detach()
        metrics = {
            "reward_chosen": rewards_chosen.sum(),
            "reward_rejected": rewards_rejected.sum(),
            "reward_accuracy": (rewards_chosen > rewards_rejected).float().sum(),
            "reward_margin": (rewards_chosen - rewards_rejected).sum(),
        }
        return ObjectiveOutput(loss_sum=losses.sum(), metrics=metrics)


def build_objective(name: str, **settings: Any) -> Objective:
    """The objective called ``name`` (``sft`` or ``dpo``) with its settings.

    Args:
        name: ``sft`` or ``dpo`` (preference optimisation; ``preference_loss`` picks DPO, hinge or IPO).
        **settings: ``z_loss`` for SFT; ``beta`` and ``preference_loss`` for preference optimisation.

    Raises:
        ValueError: An unknown objective.
    """
    if name == "sft":
        return SFTObjective(z_loss=float(settings.get("z_loss", 0.0)))
    if name == "dpo":
        return PreferenceObjective(
            loss_type=settings.get("preference_loss", "sigmoid"), beta=float(settings.get("beta", 0.1))
        )
    raise ValueError(f"unknown objective {name!r}; use sft or dpo")

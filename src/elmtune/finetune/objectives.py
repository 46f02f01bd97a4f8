"""Training objectives: what the one training loop minimises.

An objective turns a batch into a *sum* of per-item losses plus the number of items it summed over (target tokens
for SFT). The loop divides by the item count of the whole optimizer step, over all micro-batches and processes, so
gradient accumulation and data parallelism give exactly the large-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from elmtune.finetune.reference import ReferenceLogps, reference_mode
from elmtune.finetune.shared_prompt import SharedPromptPairs
from elmtune.finetune.target_logits import IGNORE_INDEX, target_logits, target_logps


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

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        """The summed loss of ``batch`` under ``model``, and extra metrics."""
        ...


@dataclass(frozen=True)
class SFTObjective:
    """Next-token cross-entropy over target tokens (labels != -100), plus an optional z-loss.

    ``z_loss`` adds ``coef * logsumexp(logits)^2`` per target token (Apple's PEFT recipe uses 1e-4); it keeps the
    softmax normaliser near 1.
    """

    z_loss: float = 0.0
    name: str = "sft"

    def count(self, batch: dict[str, Any]) -> int:
        """Target tokens (the labels a position predicts)."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def tokens(self, batch: dict[str, Any]) -> int:
        """Tokens that are not padding."""
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            return int(mask.sum())
        return int(batch["input_ids"].numel())

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        """Summed cross-entropy over target tokens (plus the z-loss); metric ``ce`` (and ``z_loss``)."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if batch.get(k) is not None}
        logits, targets = target_logits(model, inputs, batch["labels"])  # (B, K, V), (B, K)
        logits = logits.float()
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


def check_label_smoothing(loss_type: str, label_smoothing: float) -> None:
    """Refuse a label smoothing the preference loss cannot use.

    Args:
        loss_type: ``sigmoid``, ``hinge`` or ``ipo``.
        label_smoothing: Assumed probability that a pair's preference label is flipped.

    Raises:
        ValueError: ``label_smoothing`` outside ``[0, 0.5)``, or non-zero with a loss other than ``sigmoid``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing applies to the sigmoid (DPO) loss only, not {loss_type!r}; set it to 0 or use sigmoid"
        )


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    loss_type: PreferenceLoss,
    beta: float,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair preference losses from policy/reference log-ratios ``log pi(y|x) - log pi_ref(y|x)``.

    - ``sigmoid`` (DPO): ``-log sigmoid(beta * d)`` with ``d = r_c - r_r``; with ``label_smoothing`` ``ls``
      (conservative DPO): ``-(1 - ls) * log sigmoid(beta * d) - ls * log sigmoid(-beta * d)``
    - ``hinge`` (RSO / SLiC; ``beta`` is the inverse margin): ``max(0, 1 - beta * (r_c - r_r))``
    - ``ipo``: ``(r_c / n_c - r_r / n_r - 1 / (2 beta))^2`` with log-ratios averaged over each response's tokens

    Args:
        chosen_logratios: (B,) summed log-ratios of the chosen responses.
        rejected_logratios: (B,) summed log-ratios of the rejected responses.
        loss_type: ``sigmoid``, ``hinge`` or ``ipo``.
        beta: Temperature (DPO), inverse margin (hinge) or regularisation (IPO).
        chosen_tokens: (B,) target tokens per chosen response (IPO only).
        rejected_tokens: (B,) target tokens per rejected response (IPO only).
        label_smoothing: Assumed probability that a pair's labels are flipped, in ``[0, 0.5)`` (``sigmoid`` only).

    Returns:
        (B,) losses.

    Raises:
        ValueError: An unknown loss, IPO without token counts, or a label smoothing the loss cannot use.
    """
    check_label_smoothing(loss_type, label_smoothing)
    delta = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        if label_smoothing:
            return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
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

    The reference model is the policy's own peft model with its adapters switched off, or, for a run that continues
    from a saved adapter, with the frozen copy of that adapter active (see :mod:`elmtune.finetune.reference`); no
    second copy of the base weights. Its log-probabilities are computed without gradients in the same step, or
    looked up by the batch's ``item_index`` when they were computed once before training (``precomputed``).
    Apple's OpenELM-Instruct recipe used ``hinge`` (270M, 450M, 3B) and ``sigmoid`` (1.1B) with beta 0.01.

    The metrics carry TRL's ``DPOTrainer`` names and, once the loop divides them by the pair count, its values:
    ``rewards/chosen`` and ``rewards/rejected`` (``beta`` times the log-ratio), ``rewards/accuracies`` (the share of
    pairs whose chosen reward is strictly higher), ``rewards/margins`` and the policy's summed log-probabilities
    ``logps/chosen`` and ``logps/rejected``.

    Attributes:
        loss_type: ``sigmoid`` (DPO), ``hinge`` or ``ipo`` (see :func:`preference_loss`).
        beta: Temperature (DPO), inverse margin (hinge) or regularisation (IPO).
        label_smoothing: Conservative DPO: the assumed probability that a pair's labels are flipped, in ``[0, 0.5)``;
            ``sigmoid`` only.
        name: The objective's name.
        reference_adapter: The frozen reference adapter's peft name, or None for the base model as the reference.
        precomputed: Every training pair's reference log-probabilities, used for batches that carry ``item_index``
            (the pairs' indices in the training set); other batches (validation) compute them on the fly.
        share_prompt: Compute each pair's common prefix (the prompt) once, in one row per pair
            (:class:`~elmtune.finetune.shared_prompt.SharedPromptPairs`): the same loss and gradient from fewer
            positions; False runs the chosen and rejected sequences as separate rows.
    """

    loss_type: PreferenceLoss = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    name: str = "dpo"
    reference_adapter: str | None = None
    precomputed: ReferenceLogps | None = field(default=None, compare=False, repr=False)
    share_prompt: bool = True

    def __post_init__(self) -> None:
        """Refuse a label smoothing the loss cannot use (see :func:`check_label_smoothing`)."""
        check_label_smoothing(self.loss_type, self.label_smoothing)

    def count(self, batch: dict[str, Any]) -> int:
        """Preference pairs."""
        return int(batch["chosen_input_ids"].shape[0])

    def tokens(self, batch: dict[str, Any]) -> int:
        """Tokens of both sequences of every pair, padding excluded."""
        return int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    def layout(self, batch: dict[str, Any]) -> SharedPromptPairs | None:
        """The pairs laid out with their shared prompt once (``share_prompt``), or None for two rows per pair."""
        return SharedPromptPairs.from_batch(batch) if self.share_prompt else None

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        """Summed preference loss over the pairs, with TRL's metrics as sums."""
        layout = self.layout(batch)
        logps, counts = _pair_logps(model, batch, layout)  # (2B,) each, chosen first
        if self.precomputed is not None and batch.get("item_index") is not None:
            ref_logps = self.precomputed.lookup(batch["item_index"])  # (2B,)
        else:
            ref_logps = self.reference_logps(model, batch, layout)
        ratios = logps - ref_logps  # (2B,)
        chosen, rejected = ratios.chunk(2)  # (B,) each
        n_chosen, n_rejected = counts.chunk(2)
        losses = preference_loss(
            chosen, rejected, self.loss_type, self.beta, n_chosen, n_rejected, label_smoothing=self.label_smoothing
        )
        return ObjectiveOutput(loss_sum=losses.sum(), metrics=self._metric_sums(logps.detach(), ratios.detach()))

    def reference_logps(
        self, model: nn.Module, batch: dict[str, Any], layout: SharedPromptPairs | None = None
    ) -> torch.Tensor:
        """(2B,) summed reference log-probabilities of the batch's sequences, chosen first (see :func:`reference_mode`).

        Args:
            model: The policy's peft model.
            batch: The collated pairs.
            layout: The batch's :meth:`layout`, when the caller has it already.
        """
        layout = layout if layout is not None else self.layout(batch)
        with reference_mode(model, self.reference_adapter) as reference:
            return _pair_logps(reference, batch, layout)[0]  # (2B,)

    def _metric_sums(self, logps: torch.Tensor, ratios: torch.Tensor) -> dict[str, torch.Tensor]:
        """TRL's DPO metrics as sums over the pairs, from (2B,) policy log-probs and log-ratios (chosen first)."""
        logps_chosen, logps_rejected = logps.chunk(2)  # (B,) each
        rewards_chosen, rewards_rejected = (self.beta * ratios).chunk(2)  # (B,) each
        return {
            "rewards/chosen": rewards_chosen.sum(),
            "rewards/rejected": rewards_rejected.sum(),
            "rewards/accuracies": (rewards_chosen > rewards_rejected).float().sum(),
            "rewards/margins": (rewards_chosen - rewards_rejected).sum(),
            "logps/chosen": logps_chosen.sum(),
            "logps/rejected": logps_rejected.sum(),
        }


def _pair_logps(
    model: nn.Module, batch: dict[str, Any], layout: SharedPromptPairs | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target log-probabilities and target counts of every sequence of the pairs, (2B,) each, chosen first.

    With a ``layout`` each pair is one row with its shared prompt once; without, the chosen and the rejected
    sequences are separate rows.
    """
    if layout is not None:
        return layout.logps(model)
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, L)
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])  # (2B, L)
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])  # (2B, L)
    return target_logps(*target_logits(model, {"input_ids": ids, "attention_mask": mask}, labels))


def build_objective(name: str, **settings: Any) -> Objective:
    """The objective called ``name`` (``sft`` or ``dpo``) with its settings.

    Args:
        name: ``sft`` or ``dpo`` (preference optimisation; ``preference_loss`` picks DPO, hinge or IPO).
        **settings: ``z_loss`` for SFT; ``beta``, ``preference_loss``, ``label_smoothing``, ``reference_adapter``,
            ``precomputed`` and ``share_prompt`` for preference optimisation (see :class:`PreferenceObjective`).

    Raises:
        ValueError: An unknown objective, or a label smoothing the preference loss cannot use.
    """
    if name == "sft":
        return SFTObjective(z_loss=float(settings.get("z_loss", 0.0)))
    if name == "dpo":
        return PreferenceObjective(
            loss_type=settings.get("preference_loss", "sigmoid"),
            beta=float(settings.get("beta", 0.1)),
            label_smoothing=float(settings.get("label_smoothing", 0.0)),
            reference_adapter=settings.get("reference_adapter"),
            precomputed=settings.get("precomputed"),
            share_prompt=bool(settings.get("share_prompt", True)),
        )
    raise ValueError(f"unknown objective {name!r}; use sft or dpo")

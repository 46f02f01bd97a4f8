"""Preference pairs with their shared prompt computed once: one row per pair instead of two.

The chosen and the rejected sequence of a pair begin with the same tokens (the prompt, and any response tokens the two
happen to share). A causal model's output at position t depends only on tokens 0..t, so over that common prefix the
two sequences have identical activations. :class:`SharedPromptPairs` lays each pair out as one row,

    [ prefix | chosen tail | rejected tail ]      positions 0..Lc-1, then S..Lr-1

with a 4-D attention mask under which each tail attends to the prefix and causally to itself, never to the other tail
(:func:`elmtune.models.attention_mask.shared_prefix_mask`, the rule the multiple-choice scorer uses). Every target token
is then predicted from the same hidden state as in the two separate sequences, so the log-probabilities, the loss and
its gradient are the same (up to floating-point reordering); the model computes ``S`` fewer positions per pair (``2 Lc +
2 Lr`` positions become ``Lc + Lr - S``) in the policy's forward and backward passes and in the reference's forward
pass.

The position before the first differing token predicts the chosen token on one branch and the rejected token on the
other: each position therefore carries two targets, one per branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from elmtune.finetune.target_logits import IGNORE_INDEX, keeps_logits_subset, target_logps
from elmtune.models.attention_mask import common_prefix_length, shared_prefix_mask


@dataclass(frozen=True)
class SharedPromptPairs:
    """A preference batch with each pair in one row, its common prefix once.

    Attributes:
        input_ids: (B, T) prefix, chosen tail, rejected tail; padding after them.
        position_ids: (B, T) each token's position in its own sequence (the rejected tail continues the prefix).
        attention_mask: (B, 1, T, T) bool, True where a query attends to a key.
        targets: (B, T, 2) the token each position predicts on the chosen (``[..., 0]``) and rejected (``[..., 1]``)
            branch, -100 where that position predicts no target of that branch.
        shared: Prefix tokens computed once, summed over the pairs.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    shared: int

    @classmethod
    def from_batch(cls, batch: dict[str, Any], pad_token_id: int = 0) -> SharedPromptPairs:
        """Lay out a right-padded preference batch (``chosen_*`` and ``rejected_*`` ids, masks and labels).

        Args:
            batch: The collated pairs: ``{chosen,rejected}_{input_ids,attention_mask,labels}``, each (B, L).
            pad_token_id: Id written on padding (never attended, never a target).
        """
        chosen_ids, rejected_ids = batch["chosen_input_ids"], batch["rejected_input_ids"]
        chosen_lengths = batch["chosen_attention_mask"].sum(-1).tolist()
        rejected_lengths = batch["rejected_attention_mask"].sum(-1).tolist()
        chosen_rows, rejected_rows = chosen_ids.tolist(), rejected_ids.tolist()  # one copy to the host per batch
        rows = []
        for b, (lc, lr) in enumerate(zip(chosen_lengths, rejected_lengths, strict=True)):
            rows.append((lc, lr, common_prefix_length([chosen_rows[b][:lc], rejected_rows[b][:lr]])))
        width = max(lc + lr - s for lc, lr, s in rows)
        device = chosen_ids.device
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=chosen_ids.dtype, device=device)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        segments = torch.full((len(rows), width), -1, dtype=torch.long, device=device)  # 0 prefix, 1 chosen, 2 rejected
        targets = torch.full((len(rows), width, 2), IGNORE_INDEX, dtype=torch.long, device=device)
        for b, (lc, lr, s) in enumerate(rows):
            tail = lr - s
            input_ids[b, :lc] = chosen_ids[b, :lc]
            input_ids[b, lc : lc + tail] = rejected_ids[b, s:lr]
            position_ids[b, :lc] = torch.arange(lc, device=device)
            position_ids[b, lc : lc + tail] = torch.arange(s, lr, device=device)
            segments[b, :s], segments[b, s:lc], segments[b, lc : lc + tail] = 0, 1, 2
            # chosen: position t (< lc - 1) predicts label t + 1; it sits at t
            targets[b, : lc - 1, 0] = batch["chosen_labels"][b, 1:lc]
            # rejected: position t predicts label t + 1; it sits at t inside the prefix, at lc + t - s after it
            in_prefix = min(s, lr - 1)
            targets[b, :in_prefix, 1] = batch["rejected_labels"][b, 1 : in_prefix + 1]
            if tail > 1:
                targets[b, lc : lc + tail - 1, 1] = batch["rejected_labels"][b, s + 1 : lr]
        return cls(input_ids, position_ids, shared_prefix_mask(segments), targets, sum(s for _, _, s in rows))

    def logps(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed target log-probabilities and target counts of every sequence, chosen rows first.

        Args:
            model: A causal LM (possibly wrapped by peft or DistributedDataParallel) that accepts 4-D masks.

        Returns:
            ``(logps, counts)``, each (2B,): the B chosen sequences, then the B rejected ones.
        """
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}
        targets = self.targets  # (B, T, 2)
        if keeps_logits_subset(model):
            keep = (targets != IGNORE_INDEX).any(dim=-1).any(dim=0).nonzero().squeeze(-1)  # (K,)
            logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (B, K, V)
            targets = targets[:, keep]  # (B, K, 2)
        else:
            logits = model(**inputs, use_cache=False).logits  # (B, T, V)
        logps, counts = target_logps(logits, targets)  # (B, 2) each
        return logps.transpose(0, 1).reshape(-1), counts.transpose(0, 1).reshape(-1)


__all__ = ["SharedPromptPairs"]

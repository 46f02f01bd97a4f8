"""Padded batches: right padding with ``PAD_TOKEN_ID``, attention mask 0 and label -100 on padding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from elmtune.datasets.encoding import IGNORE_INDEX
from elmtune.datasets.supervised import TokenizedExample
from elmtune.models import PAD_TOKEN_ID


def padded_length(lengths: Sequence[int], pad_to_multiple_of: int | None = None) -> int:
    """The longest length, rounded up to a multiple of ``pad_to_multiple_of`` when given."""
    longest = max(lengths)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return longest


def pad_right(rows: Sequence[np.ndarray], length: int, value: int) -> torch.Tensor:
    """Stack 1-D int arrays into a (B, length) int64 tensor, right-padded with ``value``."""
    out = torch.full((len(rows), length), value, dtype=torch.long)  # (B, L)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.from_numpy(np.asarray(row, dtype=np.int64))
    return out


def collate_padded(
    examples: Sequence[TokenizedExample],
    *,
    pad_token_id: int = PAD_TOKEN_ID,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad tokenised examples into one batch.

    Args:
        examples: Tokenised examples.
        pad_token_id: Id written on padding (never a target, never attended to).
        pad_to_multiple_of: Round the length up (8 or 64 help tensor cores).

    Returns:
        ``input_ids`` (B, L), ``attention_mask`` (B, L) with 1 on real tokens, and ``labels`` (B, L) with -100 on
        padding and non-target tokens; all int64. The model derives per-row positions from the mask, so every row
        gives the same logits as when run alone.
    """
    length = padded_length([len(e) for e in examples], pad_to_multiple_of)
    input_ids = pad_right([e.input_ids for e in examples], length, pad_token_id)  # (B, L)
    labels = pad_right([e.labels for e in examples], length, IGNORE_INDEX)  # (B, L)
    attention_mask = torch.zeros_like(input_ids)
    for i, e in enumerate(examples):
        attention_mask[i, : len(e)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

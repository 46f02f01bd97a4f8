"""Packing several examples into one row with no attention across them.

A packed row of examples ``e1 e2 ...`` gets a block-diagonal causal mask (each token attends only to earlier tokens
of its own example) and ``position_ids`` that restart at 0 per example, so each example's logits equal those it gets
alone. Labels need no fixing at the seams: every example starts with BOS, whose label is -100, so the last token of
one example never learns to predict the next example.

Padding-free batches (:func:`collate_padding_free`, ``DataConfig(padding_free=True)``) are the same idea for one
micro-batch: its examples (with packing, its packs' examples: :func:`collate_packs_padding_free`), unchanged and in
order, go into a single row with restarting ``position_ids`` and no mask, which the model reads as separate sequences
(``elmtune.models.attention_mask``). Nothing is padded, so no compute is spent on padding; the loss is the padded
batch's, up to float rounding.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from elmtune.datasets.collate import pad_right, padded_length
from elmtune.datasets.encoding import IGNORE_INDEX
from elmtune.datasets.supervised import TokenizedExample
from elmtune.models import PAD_TOKEN_ID
from elmtune.models.attention_mask import block_causal_mask

PackStrategy = Literal["best_fit", "sequential"]


def pack_indices(lengths: Sequence[int], max_length: int, strategy: PackStrategy = "best_fit") -> list[list[int]]:
    """Group example indices into packs of at most ``max_length`` tokens (deterministic).

    Args:
        lengths: Length of every example.
        max_length: Capacity of a pack.
        strategy: ``best_fit`` (best-fit decreasing: longest first, each into the fullest pack it fits; few packs)
            or ``sequential`` (in dataset order, a new pack when the next example does not fit).

    Returns:
        Packs as ascending index lists, ordered by their first index.

    Raises:
        ValueError: An example longer than ``max_length``, or an unknown strategy.
    """
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        first = too_long[0]
        raise ValueError(f"example {first} has {lengths[first]} tokens, more than the pack length {max_length}")
    packs: list[list[int]] = []
    if strategy == "sequential":
        used = max_length
        for i, n in enumerate(lengths):
            if used + n > max_length:
                packs.append([])
                used = 0
            packs[-1].append(i)
            used += n
        return packs
    if strategy != "best_fit":
        raise ValueError(f"unknown packing strategy {strategy!r}; use best_fit or sequential")
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, pack id)
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        slot = bisect.bisect_left(free, (n, -1))
        if slot < len(free):
            remaining, pack = free.pop(slot)
        else:
            remaining, pack = max_length, len(packs)
            packs.append([])
        packs[pack].append(i)
        bisect.insort(free, (remaining - n, pack))
    return sorted((sorted(p) for p in packs), key=lambda p: p[0])


class PackedDataset(Dataset):
    """Tokenised examples grouped into packs; item ``i`` is the list of examples of pack ``i``.

    Args:
        examples: Tokenised examples, each at most ``max_length`` long.
        max_length: Tokens per packed row.
        strategy: See :func:`pack_indices`.
    """

    def __init__(
        self, examples: Sequence[TokenizedExample], max_length: int, strategy: PackStrategy = "best_fit"
    ) -> None:
        self.examples = list(examples)
        self.max_length = max_length
        self.packs = pack_indices([len(e) for e in self.examples], max_length, strategy)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> list[TokenizedExample]:
        return [self.examples[i] for i in self.packs[index]]

    @property
    def lengths(self) -> list[int]:
        """Tokens in each pack."""
        return [sum(len(self.examples[i]) for i in pack) for pack in self.packs]


def collate_packed(
    packs: Sequence[Sequence[TokenizedExample]],
    *,
    pad_token_id: int = PAD_TOKEN_ID,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Concatenate each pack into one row and right-pad the rows.

    Args:
        packs: Packs of tokenised examples (items of :class:`PackedDataset`).
        pad_token_id: Id written on padding.
        pad_to_multiple_of: Round the row length up.

    Returns:
        ``input_ids`` (B, L), ``labels`` (B, L) (-100 on padding), ``position_ids`` (B, L) restarting at 0 per example
        (0 on padding), all int64, and ``attention_mask`` (B, 1, L, L) bool, block-diagonal causal.
    """
    rows = [list(pack) for pack in packs]
    length = padded_length([sum(len(e) for e in row) for row in rows], pad_to_multiple_of)
    input_ids = pad_right([np.concatenate([e.input_ids for e in row]) for row in rows], length, pad_token_id)  # (B, L)
    labels = pad_right([np.concatenate([e.labels for e in row]) for row in rows], length, IGNORE_INDEX)  # (B, L)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)  # (B, L)
    sequence_ids = torch.full((len(rows), length), -1, dtype=torch.long)  # (B, L)
    for b, row in enumerate(rows):
        start = 0
        for k, e in enumerate(row):
            position_ids[b, start : start + len(e)] = torch.arange(len(e))
            sequence_ids[b, start : start + len(e)] = k
            start += len(e)
    return {
        "input_ids": input_ids,
        "attention_mask": block_causal_mask(sequence_ids),
        "position_ids": position_ids,
        "labels": labels,
    }


def collate_padding_free(examples: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
    """Concatenate a micro-batch's examples into one row without padding or mask.

    Args:
        examples: Tokenised examples (a micro-batch).

    Returns:
        ``input_ids`` (1, T), ``labels`` (1, T) and ``position_ids`` (1, T) restarting at 0 per example, int64, where
        T is the examples' total length. Without an ``attention_mask`` the restarting positions tell the model where
        each example starts; it attends within each example only.
    """
    input_ids = torch.from_numpy(np.concatenate([e.input_ids for e in examples]).astype(np.int64))[None]  # (1, T)
    labels = torch.from_numpy(np.concatenate([e.labels for e in examples]).astype(np.int64))[None]  # (1, T)
    position_ids = torch.cat([torch.arange(len(e)) for e in examples])[None]  # (1, T)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def collate_packs_padding_free(packs: Sequence[Sequence[TokenizedExample]]) -> dict[str, torch.Tensor]:
    """:func:`collate_padding_free` over the examples of a micro-batch of packs, pack by pack, in one row."""
    return collate_padding_free([example for pack in packs for example in pack])

"""Packing several question rows into one sequence, so a forward pass computes (almost) no padding.

Rows of a batch differ in length; right-padding them to the longest row wastes compute on every padded position
(often more than the shared-prefix layout saves). Packed, the rows that follow a batch's common prefix (the preamble
every Apple prompt shares, encoded once and cached) are concatenated into a few sequences of about ``capacity``
tokens each::

    cache      P P P                        (the batch's common prefix, positions 0..2)
    pack 0     r0 r0 r0 r0 | r1 r1 r1       (owner 0 0 0 0 | 1 1 1; each row keeps its own positions)
    pack 1     r2 r2 r2 r2 r2 | pad pad     (owner 2 2 2 2 2 | -1 -1)

A token attends to the cached prefix, and causally to the tokens of its own row that its row's layout allows
(:func:`elmtune.evaluation.layout.shared_prefix_mask`'s rule), so every logit equals the one of the row alone. Packs
stay short (about 512 tokens) because attention over a pack costs its length squared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from elmtune.evaluation.layout import Row

PACK_TOKENS = 512
"""Target tokens per packed sequence (the number of sequences is the batch's tokens / this, rounded up)."""


@dataclass(frozen=True)
class PackedBatch:
    """Packed rows as tensors.

    Attributes:
        input_ids: (B, T) token ids after the common prefix, right-padded.
        position_ids: (B, T) the rows' own positions (padding: 0).
        owner: (B, T) index of the row each token belongs to (-1 on padding).
        segments: (B, T) the rows' segment ids (0 = context, i + 1 = choice i; -1 on padding).
        where: Per row, ``(pack, column)``: its first token after the prefix sits at ``input_ids[pack, column]``.
        prefix: Length of the common prefix that was cut off every row.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    owner: torch.Tensor
    segments: torch.Tensor
    where: tuple[tuple[int, int], ...]
    prefix: int

    def locate(self, row: int, position: int) -> tuple[int, int]:
        """``(pack, column)`` of row index ``position`` (>= prefix) of row ``row``."""
        pack, column = self.where[row]
        return pack, column + position - self.prefix


def assign_packs(lengths: Sequence[int], capacity: int = PACK_TOKENS) -> list[list[int]]:
    """Balanced packs: as few as ``capacity`` allows, filled longest item first into the least-filled pack.

    The batch is padded to its fullest pack, so packs are balanced rather than filled one after the other (which
    would leave a short last pack padded to full width). A pack may exceed ``capacity`` by less than one item.

    Args:
        lengths: Token count of each item.
        capacity: Target tokens per pack.

    Returns:
        Packs as lists of item indices (longest items first).
    """
    count = max(1, min(len(lengths), -(-sum(lengths) // capacity)))
    packs: list[list[int]] = [[] for _ in range(count)]
    load = [0] * count
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        p = min(range(count), key=lambda p: (load[p], p))
        packs[p].append(i)
        load[p] += lengths[i]
    return [pack for pack in packs if pack]


def pack_rows(rows: Sequence[Row], prefix: int, pad_id: int, capacity: int = PACK_TOKENS) -> PackedBatch:
    """Cut ``prefix`` tokens off every row and pack the rests into right-padded sequences.

    Args:
        rows: Rows that share their first ``prefix`` tokens (ids, positions, segment 0).
        prefix: Tokens cut off every row (encoded once by the caller).
        pad_id: Padding token id.
        capacity: Most tokens per packed sequence.

    Returns:
        The :class:`PackedBatch`.
    """
    lengths = [len(row.tokens) - prefix for row in rows]
    packs = assign_packs(lengths, capacity)
    width = max(sum(lengths[i] for i in pack) for pack in packs)
    shape = (len(packs), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    owner = torch.full(shape, -1, dtype=torch.long)
    seg = torch.full(shape, -1, dtype=torch.long)
    where: list[tuple[int, int]] = [(0, 0)] * len(rows)
    for p, pack in enumerate(packs):
        column = 0
        for i in pack:
            row, n = rows[i], lengths[i]
            span = slice(column, column + n)
            ids[p, span] = torch.tensor(row.tokens[prefix:])
            pos[p, span] = torch.tensor(row.positions[prefix:])
            seg[p, span] = torch.tensor(row.segments[prefix:])
            owner[p, span] = i
            where[i] = (p, column)
            column += n
    return PackedBatch(ids, pos, owner, seg, tuple(where), prefix)


def packed_mask(owner: torch.Tensor, segments: torch.Tensor, prefix: int) -> torch.Tensor:
    """4-D bool mask (B, 1, T, prefix + T) of packed rows; True = attend.

    Every real token attends to the ``prefix`` cached tokens, and to earlier tokens of its own row that are context
    (segment 0) or of its own choice segment. A padding token attends only to itself.
    """
    width = owner.shape[1]
    index = torch.arange(width, device=owner.device)
    causal = index[:, None] >= index[None, :]  # (T, T)
    q_owner, k_owner = owner[:, :, None], owner[:, None, :]  # (B, T, 1), (B, 1, T)
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    allowed = causal & (k_owner == q_owner) & ((k_seg == 0) | (k_seg == q_seg)) & (k_owner >= 0)  # (B, T, T)
    allowed |= torch.eye(width, dtype=torch.bool, device=owner.device)
    if prefix:
        cached = (owner >= 0)[:, :, None].expand(-1, -1, prefix)  # (B, T, prefix)
        allowed = torch.cat([cached, allowed], dim=-1)  # (B, T, prefix + T)
    return allowed[:, None]

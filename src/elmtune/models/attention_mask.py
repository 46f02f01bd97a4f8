"""From the caller's ``attention_mask`` to what SDPA needs: a boolean mask (or none at all) and token positions.

Padding masks are 2-D (B, past + L) with 1 for real tokens; a 4-D mask (B, 1, L, past + L), such as a block-diagonal
packing mask, is used as given.

Without a mask, ``position_ids`` that restart within a row mean several sequences packed into it without padding
(transformers' padding-free layout): a new sequence starts wherever a position is not its predecessor's plus one. A
single such row is attended sequence by sequence (:func:`packed_segments`: no mask and no attention across or
beyond the sequences' own squares); several rows get a block-diagonal causal mask (:func:`packed_rows_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def positions_from_mask(mask_2d: torch.Tensor, length: int) -> torch.Tensor:
    """Positions that count only attended tokens: a padded row gets the positions it would have alone.

    Args:
        mask_2d: (B, past + L) padding mask, 1 for real tokens.
        length: L, the number of new tokens.

    Returns:
        (B, L) positions of the new tokens (0 for the left padding).
    """
    positions = mask_2d.long().cumsum(-1) - 1  # (B, past + L)
    return positions.clamp(min=0)[:, -length:]


def sdpa_attention_mask(
    attention_mask: torch.Tensor | None, length: int, past: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """Turn the caller's mask into what SDPA needs: ``(bool mask (B|1, 1, L, past + L) or None, is_causal)``.

    No mask is materialised when nothing is padded: plain causal attention uses ``is_causal`` and a one-token decode
    step attends to the whole cache. A 4-D mask (bool, or additive float with 0 for "attend") is used as given, e.g. a
    block-diagonal packing mask.

    Args:
        attention_mask: None, a 2-D padding mask (B, past + L) or a 4-D mask (B, 1, L, past + L).
        length: L, the number of new tokens.
        past: Tokens already in the KV cache.
        device: Device of the hidden states.

    Returns:
        The boolean mask (True: attend) or None, and whether SDPA should apply causality itself.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    else:
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if attention_mask is None:
            if past == 0:
                return None, length > 1
            if length == 1:
                return None, False
        total = past + length
        key_pos = torch.arange(total, device=device)
        query_pos = torch.arange(past, total, device=device)
        mask = (key_pos[None, :] <= query_pos[:, None])[None, None]  # (1, 1, L, past + L)
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -total:].bool()  # (B, 1, L, past + L)
    # A row with nothing to attend to (a left-pad query) would give NaN in SDPA: let it attend everywhere instead;
    # its output is ignored by the caller anyway.
    return mask | ~mask.any(dim=-1, keepdim=True), False


def _sequence_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True where a packed sequence starts (the first token, and where a position breaks the run)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)  # (B, L)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def is_packed(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, past: int) -> bool:
    """Whether the input is packed without padding: no mask, no cache, and positions that restart within a row."""
    if position_ids is None or attention_mask is not None or past or position_ids.shape[-1] < 2:
        return False
    if position_ids.device.type == "meta":
        return False
    return bool(_sequence_starts(position_ids)[:, 1:].any())


def packed_segments(position_ids: torch.Tensor) -> tuple[int, ...]:
    """Lengths of the sequences packed into one row (see :func:`is_packed`), in order; they sum to L.

    Args:
        position_ids: (1, L) positions restarting at each sequence.
    """
    starts = _sequence_starts(position_ids)[0].nonzero().flatten().tolist()  # first token of each sequence
    bounds = [*starts, position_ids.shape[-1]]
    return tuple(end - start for start, end in zip(bounds, bounds[1:], strict=False))


def block_causal_mask(sequence_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal attention mask from per-token example ids.

    Args:
        sequence_ids: (B, L) index of the example each token belongs to; -1 on padding.

    Returns:
        (B, 1, L, L) bool, True where query i may attend to key j: same example and j <= i. A padding query attends
        only to itself (a row with no key would give NaN).
    """
    length = sequence_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=sequence_ids.device).tril()  # (L, L)
    same = sequence_ids[:, :, None] == sequence_ids[:, None, :]  # (B, L, L)
    real = (sequence_ids >= 0)[:, :, None]  # (B, L, 1)
    eye = torch.eye(length, dtype=torch.bool, device=sequence_ids.device)  # (L, L)
    mask = (same & causal & real) | (eye & ~real)  # (B, L, L)
    return mask[:, None]  # (B, 1, L, L)


def packed_rows_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask (B, 1, L, L) of packed rows (see :func:`is_packed`): True where a query attends."""
    return block_causal_mask(_sequence_starts(position_ids).long().cumsum(-1))  # sequence ids (B, L), none padding


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens all the token id sequences share (at most the shortest one's length).

    That is the prefix a :func:`shared_prefix_mask` row holds once.
    """
    length = 0
    for column in zip(*sequences, strict=False):  # stops at the shortest
        if any(token != column[0] for token in column[1:]):
            break
        length += 1
    return length


def shared_prefix_mask(segments: torch.Tensor) -> torch.Tensor:
    """4-D bool mask (B, 1, R, R) from segment ids (B, R): 0 = prefix, i > 0 = continuation i, -1 = padding.

    Several continuations of one prefix in one row (the choices of a multiple-choice question, the two replies of a
    preference pair), each computing what it would alone. A query attends to earlier keys of the prefix and of its own
    segment; padding keys are never attended, and a padding query attends only to itself (so no row is empty and none
    can produce NaN).
    """
    width = segments.shape[1]
    index = torch.arange(width, device=segments.device)
    causal = index[:, None] >= index[None, :]  # (R, R): query >= key
    query, key = segments[:, :, None], segments[:, None, :]  # (B, R, 1), (B, 1, R)
    allowed = causal & ((key == query) | (key == 0)) & (key >= 0) & (query >= 0)  # (B, R, R)
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)
    return allowed[:, None]  # (B, 1, R, R)


__all__ = [
    "block_causal_mask",
    "common_prefix_length",
    "is_packed",
    "packed_rows_mask",
    "packed_segments",
    "positions_from_mask",
    "sdpa_attention_mask",
    "shared_prefix_mask",
]

"""Row layouts for scoring: one row per question with a shared prefix, or one full row per choice.

Shared-prefix layout of a question whose choices read inputs ``I_1 ... I_k`` (``I_i = context_i + continuation_i[:-1]``,
as in lm-eval) with longest common prefix ``P``::

    tokens     P P P P | a a | b b b | c          (segments:   0 0 0 0 | 1 1 | 2 2 2 | 3)
    positions  0 1 2 3 | 4 5 | 4 5 6 | 4          (each choice continues from the prefix length)

A choice's tokens attend causally to the prefix and to their own segment only, so every logit equals the one of the
choice's own full sequence; the logit that predicts a choice's first token usually sits on the prefix's last token and
is shared by all choices. The prefix is encoded once per question instead of once per choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from elmtune.evaluation.encoding import EncodedRequest


@dataclass(frozen=True)
class Target:
    """Where one request's continuation is read in its row.

    Attributes:
        request: Index of the request (choice) within its question.
        positions: Row indices whose logits predict the continuation tokens, in order.
        tokens: The continuation token ids.
    """

    request: int
    positions: tuple[int, ...]
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Row:
    """One model input row: tokens, RoPE positions, segment ids (0 = prefix, i + 1 = choice i) and read-outs."""

    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    segments: tuple[int, ...]
    targets: tuple[Target, ...]

    @property
    def first_needed(self) -> int:
        """The smallest row index whose logits are needed."""
        return min(target.positions[0] for target in self.targets)

    @property
    def is_plain(self) -> bool:
        """True for a single causal sequence (no choice segments), which needs only a 2-D padding mask."""
        return all(segment == 0 for segment in self.segments)


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    length = min(len(seq) for seq in sequences)
    for i in range(length):
        if any(seq[i] != first[i] for seq in sequences[1:]):
            return i
    return length


def _model_inputs(requests: Sequence[EncodedRequest], max_length: int) -> tuple[list[tuple[int, ...]], bool]:
    """lm-eval's input per request, ``(context + continuation)[-(max_length + 1):][:-1]``, and whether any was cut."""
    inputs, truncated = [], False
    for request in requests:
        if not request.continuation:
            raise ValueError("a continuation encodes to zero tokens; nothing to score")
        if len(request.continuation) > max_length:
            raise ValueError(f"a continuation of {len(request.continuation)} tokens exceeds max_length {max_length}")
        full = request.context + request.continuation
        truncated |= len(full) > max_length + 1
        inputs.append(full[-(max_length + 1) :][:-1])
    return inputs, truncated


def _full_row(index: int, tokens: tuple[int, ...], continuation: tuple[int, ...]) -> Row:
    n, c = len(tokens), len(continuation)
    target = Target(index, tuple(range(n - c, n)), continuation)
    return Row(tokens, tuple(range(n)), (0,) * n, (target,))


def plan_rows(requests: Sequence[EncodedRequest], *, shared: bool, max_length: int) -> list[Row]:
    """Lay out one question's requests as rows.

    Args:
        requests: The encoded choices of one question.
        shared: Pack all choices into one shared-prefix row; otherwise one full row per choice. Questions whose
            inputs had to be left-truncated always get full rows (lm-eval truncates each choice on its own).
        max_length: The model's context length (lm-eval's ``max_length``).

    Returns:
        The rows; together their targets cover every request once.
    """
    inputs, truncated = _model_inputs(requests, max_length)
    if not shared or truncated or len(inputs) == 1:
        return [_full_row(i, inp, req.continuation) for i, (inp, req) in enumerate(zip(inputs, requests, strict=True))]
    prefix = _common_prefix(inputs)
    tokens = list(inputs[0][:prefix])
    positions = list(range(prefix))
    segments = [0] * prefix
    targets = []
    for i, (inp, request) in enumerate(zip(inputs, requests, strict=True)):
        offset = len(tokens)
        tokens += inp[prefix:]
        positions += range(prefix, len(inp))
        segments += [i + 1] * (len(inp) - prefix)
        n, c = len(inp), len(request.continuation)
        row_positions = tuple(t if t < prefix else offset + t - prefix for t in range(n - c, n))
        targets.append(Target(i, row_positions, request.continuation))
    return [Row(tuple(tokens), tuple(positions), tuple(segments), tuple(targets))]


def collate(rows: Sequence[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad rows into a batch.

    Returns:
        ``input_ids`` (B, R), ``position_ids`` (B, R) and segment ids (B, R) with -1 on padding.
    """
    width = max(len(row.tokens) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.tokens)
        ids[b, :n] = torch.tensor(row.tokens)
        pos[b, :n] = torch.tensor(row.positions)
        seg[b, :n] = torch.tensor(row.segments)
    return ids, pos, seg


def attention_mask(rows: Sequence[Row], segments: torch.Tensor) -> torch.Tensor:
    """The mask a batch needs: a 2-D padding mask (B, R) when every row is a plain causal sequence, else the 4-D
    shared-prefix mask (B, 1, R, R)."""
    if all(row.is_plain for row in rows):
        return (segments >= 0).long()
    return shared_prefix_mask(segments)


def common_prefix(rows: Sequence[Row]) -> int:
    """Length of the token prefix that every row of a batch shares (same ids, prefix segment, positions 0..P-1).

    It stops before the first position whose logits any row needs and leaves every row at least one more token.
    """
    first = rows[0]
    limit = min(min(row.first_needed for row in rows), min(len(row.tokens) for row in rows) - 1)
    length = 0
    while (
        length < limit
        and first.segments[length] == 0
        and all(row.tokens[length] == first.tokens[length] and row.segments[length] == 0 for row in rows[1:])
    ):
        length += 1
    return length


def shared_prefix_mask(segments: torch.Tensor) -> torch.Tensor:
    """4-D bool mask (B, 1, R, R) from segment ids (B, R): 0 = prefix, i > 0 = choice i, -1 = padding.

    A query attends to earlier keys of the prefix and of its own segment; padding keys are never attended, and a padding
    query attends only to itself (so no row is empty and none can produce NaN).
    """
    width = segments.shape[1]
    index = torch.arange(width, device=segments.device)
    causal = index[:, None] >= index[None, :]  # (R, R): query >= key
    query, key = segments[:, :, None], segments[:, None, :]  # (B, R, 1), (B, 1, R)
    allowed = causal & ((key == query) | (key == 0)) & (key >= 0) & (query >= 0)  # (B, R, R)
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)
    return allowed[:, None]  # (B, 1, R, R)

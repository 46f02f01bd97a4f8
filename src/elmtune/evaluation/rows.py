"""Requests as model input rows: lm-eval's tokenisation, the shared-prefix row layout, and packing rows into sequences.

**Tokenisation.** lm-eval's Hugging Face backend moves the context's trailing whitespace to the front of the
continuation, encodes context + continuation as one string, and takes as continuation tokens everything after the
context's own token count. The model then reads ``context_tokens + continuation_tokens`` (not the joint encoding). An
empty context is replaced by the prefix token (BOS). Reproducing this is what makes per-example predictions identical
to lm-eval's.

**Rows.** One row per question with a shared prefix, or one full row per choice. Shared-prefix layout of a question
whose choices read inputs ``I_1 ... I_k`` (``I_i = context_i + continuation_i[:-1]``, as in lm-eval) with longest
common prefix ``P``::

    tokens     P P P P | a a | b b b | c          (segments:   0 0 0 0 | 1 1 | 2 2 2 | 3)
    positions  0 1 2 3 | 4 5 | 4 5 6 | 4          (each choice continues from the prefix length)

A choice's tokens attend causally to the prefix and to their own segment only, so every logit equals the one of the
choice's own full sequence; the logit that predicts a choice's first token usually sits on the prefix's last token and
is shared by all choices. The prefix is encoded once per question instead of once per choice.

**Packing.** Rows of a batch differ in length; right-padding them to the longest row wastes compute on every padded
position (often more than the shared-prefix layout saves). Packed, the rows that follow a batch's common prefix (the
preamble every Apple prompt shares, encoded once and cached) are concatenated into a few sequences of about
``capacity`` tokens each::

    cache      P P P                        (the batch's common prefix, positions 0..2)
    pack 0     r0 r0 r0 r0 | r1 r1 r1       (owner 0 0 0 0 | 1 1 1; each row keeps its own positions)
    pack 1     r2 r2 r2 r2 r2 | pad pad     (owner 2 2 2 2 2 | -1 -1)

A token attends to the cached prefix, and causally to the tokens of its own row that its row's layout allows
(:func:`shared_prefix_mask`'s rule), so every logit equals the one of the row alone. Packs stay short (about 512
tokens) because attention over a pack costs its length squared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.models.attention_mask import common_prefix_length, shared_prefix_mask

PACK_TOKENS = 512
"""Target tokens per packed sequence (the number of sequences is the batch's tokens / this, rounded up)."""


@dataclass(frozen=True)
class EncodedRequest:
    """One scored continuation in token ids: the model reads ``context + continuation[:-1]``."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode(tokenizer: PreTrainedTokenizerBase, text: str, add_bos: bool | None) -> list[int]:
    """Encode like lm-eval's ``tok_encode``: ``add_bos`` chooses special tokens (None: the tokenizer's default).

    A text that already starts with the BOS string gets no second BOS.
    """
    kwargs = {} if add_bos is None else {"add_special_tokens": add_bos}
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        kwargs = {"add_special_tokens": False}
    return list(tokenizer.encode(text, **kwargs))


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that stands in for an empty context: BOS, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand in for an empty context")
    return token


def encode_request(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, add_bos: bool | None = True
) -> EncodedRequest:
    """Tokenise one (context, continuation) pair with lm-eval's semantics.

    Args:
        tokenizer: The model's tokenizer.
        context: Conditioning text; its trailing whitespace moves to the continuation.
        continuation: The scored text.
        add_bos: Add special tokens (BOS) to the context; None keeps the tokenizer's default.

    Returns:
        Context and continuation token ids.
    """
    if context == "":
        cont = encode(tokenizer, continuation, add_bos=False)
        prefix = prefix_token_id(tokenizer)
        if cont and cont[0] == prefix:
            return EncodedRequest(tuple(cont[:1]), tuple(cont[1:]))
        return EncodedRequest((prefix,), tuple(cont))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation, add_bos)
    context_ids = encode(tokenizer, context, add_bos)
    return EncodedRequest(tuple(context_ids), tuple(whole[len(context_ids) :]))


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
    prefix = common_prefix_length(inputs)
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
    """The mask a batch needs: a 2-D padding mask (B, R), or the 4-D shared-prefix mask (B, 1, R, R).

    The 2-D mask suffices when every row is a plain causal sequence.
    """
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

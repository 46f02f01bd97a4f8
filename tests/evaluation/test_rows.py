"""Rows: the shared-prefix layout and its mask, lm-eval's left truncation, balanced packs and the packed mask."""

import torch

from elmtune.evaluation.rows import EncodedRequest, assign_packs, pack_rows, packed_mask, plan_rows
from elmtune.models.attention_mask import shared_prefix_mask


def test_shared_row_layout_and_mask():
    # Two choices sharing the context [1, 5, 6]: inputs [1,5,6,7] and [1,5,6,8,9] (continuations [7,3] and [8,9,4]).
    requests = [EncodedRequest((1, 5, 6), (7, 3)), EncodedRequest((1, 5, 6), (8, 9, 4))]
    (row,) = plan_rows(requests, shared=True, max_length=64)
    assert row.tokens == (1, 5, 6, 7, 8, 9)
    assert row.positions == (0, 1, 2, 3, 3, 4)
    assert row.segments == (0, 0, 0, 1, 2, 2)
    # The first continuation token of both choices is predicted by the context's last token (row index 2).
    assert row.targets[0].positions == (2, 3) and row.targets[1].positions == (2, 4, 5)
    mask = shared_prefix_mask(torch.tensor([list(row.segments) + [-1]]))[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 1, 0, 0],  # choice 2 does not see choice 1
            [1, 1, 1, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],  # padding attends only to itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_left_truncation_follows_lm_eval():
    # lm-eval keeps the last max_length + 1 tokens of context + continuation and feeds all but the last.
    requests = [EncodedRequest(tuple(range(10, 30)), (40, 41)), EncodedRequest(tuple(range(10, 30)), (42,))]
    rows = plan_rows(requests, shared=True, max_length=8)
    assert [r.tokens for r in rows] == [tuple(range(23, 30)) + (40,), tuple(range(22, 30))]
    assert rows[0].targets[0].positions == (6, 7) and rows[1].targets[0].positions == (7,)


def test_packs_are_few_and_balanced():
    # 14 tokens at capacity 7: two packs. Longest first into the least-filled pack: 5 -> 0, 4 -> 1, 3 -> 1, 2 -> 0.
    assert assign_packs([5, 3, 4, 2], capacity=7) == [[0, 3], [2, 1]]
    # Balanced, not filled in turn (which would give 3 + 3 + 3 and a lone 3 padded to 9): both packs hold 6.
    assert assign_packs([3, 3, 3, 3], capacity=10) == [[0, 2], [1, 3]]
    assert assign_packs([9, 1], capacity=7) == [[0], [1]]  # an item over capacity
    assert assign_packs([2, 2], capacity=512) == [[0, 1]]


def test_packed_rows_and_mask():
    # Row 0: context [1, 5, 6] with choices [7] and [8, 9]; row 1: context [1, 5, 4] with one choice [3].
    row0 = plan_rows(
        [EncodedRequest((1, 5, 6), (7, 2)), EncodedRequest((1, 5, 6), (8, 9, 2))], shared=True, max_length=64
    )
    row1 = plan_rows([EncodedRequest((1, 5, 4), (3, 2))], shared=True, max_length=64)
    packed = pack_rows([row0[0], row1[0]], prefix=2, pad_id=0, capacity=16)
    assert packed.input_ids.tolist() == [[6, 7, 8, 9, 4, 3]]
    assert packed.position_ids.tolist() == [[2, 3, 3, 4, 2, 3]]
    assert packed.owner.tolist() == [[0, 0, 0, 0, 1, 1]]
    assert packed.segments.tolist() == [[0, 1, 2, 2, 0, 0]]
    assert packed.locate(1, 3) == (0, 5)
    mask = packed_mask(packed.owner, packed.segments, prefix=2)[0, 0].int()
    expected = [
        # prefix | 6  7  8  9  4  3
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0, 0, 0],  # choice 2 does not see choice 1
        [1, 1, 1, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 0],  # row 1 sees the shared prefix, not row 0
        [1, 1, 0, 0, 0, 0, 1, 1],
    ]
    assert mask.tolist() == expected


def test_padding_attends_only_to_itself():
    owner = torch.tensor([[0, 0, -1]])
    mask = packed_mask(owner, torch.tensor([[0, 0, -1]]), prefix=1)[0, 0].int()
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]

"""Preference pairs with their shared prompt computed once give the loss and gradients of two rows per pair."""

from __future__ import annotations

import pytest
import torch

from elmtune.finetune.objectives import PreferenceObjective
from elmtune.finetune.shared_prompt import SharedPromptPairs

IGNORE = -100


def _pairs(rows: list[tuple[list[int], list[int], int]]) -> dict[str, torch.Tensor]:
    """Right-padded pairs from (chosen ids, rejected ids, prompt length): labels are the ids after the prompt."""
    length = max(max(len(c), len(r)) for c, r, _ in rows)
    batch: dict[str, list[list[int]]] = {}
    for chosen, rejected, prompt in rows:
        for side, ids in (("chosen", chosen), ("rejected", rejected)):
            pad = length - len(ids)
            batch.setdefault(f"{side}_input_ids", []).append(ids + [0] * pad)
            batch.setdefault(f"{side}_attention_mask", []).append([1] * len(ids) + [0] * pad)
            batch.setdefault(f"{side}_labels", []).append([IGNORE] * prompt + ids[prompt:] + [IGNORE] * pad)
    return {key: torch.tensor(value) for key, value in batch.items()}


def test_a_pair_is_one_row_with_two_targets_per_position():
    # prompt [1, 2]; the responses share the token 3, then differ: chosen 4 5, rejected 7
    layout = SharedPromptPairs.from_batch(_pairs([([1, 2, 3, 4, 5], [1, 2, 3, 7], 2)]))
    assert layout.input_ids.tolist() == [[1, 2, 3, 4, 5, 7]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    assert layout.targets[0, :, 0].tolist() == [IGNORE, 3, 4, 5, IGNORE, IGNORE]  # chosen: position t predicts t + 1
    assert layout.targets[0, :, 1].tolist() == [IGNORE, 3, 7, IGNORE, IGNORE, IGNORE]  # 3 predicts the rejected 7
    assert layout.shared == 3
    allowed = layout.attention_mask[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],  # the rejected tail sees the prefix and itself, not the chosen tail
    ]


def test_padding_attends_to_itself_and_predicts_nothing():
    layout = SharedPromptPairs.from_batch(_pairs([([1, 2, 3], [1, 2, 4], 2), ([1, 5, 6, 7, 8], [1, 5, 9, 9, 9], 1)]))
    assert layout.input_ids.shape == (2, 8)  # the widest row: 5 + 5 - 2
    padding = layout.attention_mask[0, 0, 4:]  # row 0 holds 3 + 1 tokens
    assert torch.equal(padding, torch.eye(8, dtype=torch.bool)[4:])
    assert (layout.targets[0, 4:] == IGNORE).all()


EDGE_PAIRS = [
    ([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 8], 3),  # prompt shared, responses differ at once; unequal lengths
    ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 9], 2),  # responses share two tokens beyond the prompt
    ([4, 5, 6, 7], [4, 5, 6, 7, 8, 9], 2),  # the chosen sequence is a prefix of the rejected one
    ([4, 5, 6, 7, 8], [4, 5, 6, 7, 8], 3),  # identical responses
    ([10, 11, 12], [13, 11, 12, 14], 1),  # nothing shared
]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_the_loss_and_gradients_equal_two_rows_per_pair(loss_type, adapted_tiny):
    model = adapted_tiny(dropout=0.0).train()  # no dropout: the two passes compute the same function
    batch = _pairs(EDGE_PAIRS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = []
    for share_prompt in (False, True):
        objective = PreferenceObjective(loss_type=loss_type, beta=0.5, share_prompt=share_prompt)
        out = objective(model, batch)
        grads = torch.autograd.grad(out.loss_sum, trainable)
        results.append((out, grads))
    (separate, separate_grads), (shared, shared_grads) = results
    assert separate.loss_sum.item() > 0
    torch.testing.assert_close(shared.loss_sum, separate.loss_sum, rtol=1e-5, atol=1e-6)
    for key, value in separate.metrics.items():
        torch.testing.assert_close(shared.metrics[key], value, rtol=1e-5, atol=1e-5, msg=key)
    assert any(g.abs().max() > 0 for g in separate_grads)
    for got, want in zip(shared_grads, separate_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_reference_log_probs_equal_two_rows_per_pair(adapted_tiny):
    model = adapted_tiny()
    batch = _pairs(EDGE_PAIRS)
    separate = PreferenceObjective(share_prompt=False).reference_logps(model, batch)  # (2B,)
    shared = PreferenceObjective(share_prompt=True).reference_logps(model, batch)
    assert separate.shape == (2 * len(EDGE_PAIRS),)
    torch.testing.assert_close(shared, separate, rtol=1e-6, atol=1e-5)

"""The SFT and DPO losses ask the model for the logits of target positions only, and lose nothing by it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elmtune.finetune.objectives import PreferenceObjective, SFTObjective, target_logps
from elmtune.finetune.target_logits import keeps_logits_subset, target_logits


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """4 rows of 24 tokens: prompts of different lengths (no targets), responses, and right padding in row 0."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (4, 24), generator=gen)  # (B, L)
    mask = torch.ones_like(ids)
    mask[0, 18:] = 0
    labels = ids.clone()
    for row, prompt in enumerate((6, 9, 12, 10)):
        labels[row, :prompt] = -100
    labels[0, 18:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _full_ce(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy from all (B, L, V) logits: the plain formula."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="sum")


def test_sft_loss_and_gradients_equal_the_full_logits_formula(adapted_tiny):
    model = adapted_tiny()
    batch = _batch()
    expected = _full_ce(model, batch)
    expected_grads = torch.autograd.grad(expected, [p for p in model.parameters() if p.requires_grad])
    loss = SFTObjective()(model, batch).loss_sum
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_vocabulary_projection_runs_only_on_positions_with_a_target(make_tiny):
    model = make_tiny()
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    batch = _batch()
    SFTObjective()(model, batch)
    # positions t predicting a target at t + 1: from t = 5 (row 0's prompt is 6 tokens) to t = 22
    assert seen == [(4, 23 - 5, model.config.model_dim)]


class _NoSubset(nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_a_model_without_logits_to_keep_gets_every_position(make_tiny):
    model = _NoSubset(make_tiny())
    assert not keeps_logits_subset(model) and keeps_logits_subset(model.inner)
    batch = _batch()
    logits, targets = target_logits(model, {"input_ids": batch["input_ids"]}, batch["labels"])
    assert logits.shape[:2] == targets.shape == (4, 23)
    torch.testing.assert_close(SFTObjective()(model, batch).loss_sum, _full_ce(model.inner, batch))


def test_a_rows_log_prob_does_not_depend_on_the_rest_of_the_batch(make_tiny):
    # the precomputed reference is scored in other batches than the training step: the sums must agree exactly
    model = make_tiny().eval()
    batch = _batch(seed=3)
    with torch.no_grad():
        together = target_logps(*target_logits(model, {"input_ids": batch["input_ids"]}, batch["labels"]))[0]
        for row in range(4):
            ids, labels = batch["input_ids"][row : row + 1], batch["labels"][row : row + 1]
            alone = target_logps(*target_logits(model, {"input_ids": ids}, labels))[0]
            assert torch.equal(alone, together[row : row + 1])


@pytest.mark.parametrize("share_prompt", [True, False])
def test_dpo_reference_log_probs_equal_the_full_logits_formula(share_prompt, adapted_tiny, make_tiny):
    batch = _batch(seed=5)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    ids[2:, :5] = ids[:2, :5]  # rows 2 and 3 (rejected) share 5 prompt tokens with rows 0 and 1 (chosen)
    pairs = {
        f"{side}_{key}": value[rows]
        for side, rows in (("chosen", slice(0, 2)), ("rejected", slice(2, 4)))
        for key, value in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))
    }
    with torch.no_grad():
        objective = PreferenceObjective(share_prompt=share_prompt)
        got = objective.reference_logps(adapted_tiny(), pairs)  # (N,): adapter disabled, chosen rows first
        logits = make_tiny()(input_ids=ids, attention_mask=mask).logits  # (N, L, V): the same base, row by row
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    torch.testing.assert_close(got, -ce.sum(-1), rtol=1e-6, atol=1e-4)

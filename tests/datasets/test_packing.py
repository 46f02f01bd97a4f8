"""Packing and padding change nothing for an example: its logits and loss equal those of the example run alone.

Tiny random OpenELM in fp32, real tokenised rows (commonsense with the whole sequence trained, Alpaca with
responses only), atol 1e-5.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elmtune.datasets import (
    IGNORE_INDEX,
    PackedDataset,
    TokenizeConfig,
    block_causal_mask,
    collate_packed,
    collate_packs_padding_free,
    collate_padded,
    collate_padding_free,
    load_sft_examples,
    pack_indices,
    tokenize_sft,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def examples(tokenizer, data_dir):
    common, _ = load_sft_examples(data_dir / "commonsense_train_sample200.json", limit=5)
    alpaca, _ = load_sft_examples(data_dir / "alpaca_en_demo_first200.json", limit=5)
    a, _ = tokenize_sft(common, tokenizer, TokenizeConfig(max_length=96, train_on_prompt=True))
    b, _ = tokenize_sft(alpaca, tokenizer, TokenizeConfig(max_length=96, truncation_side="left"))
    return a + b


def _alone(model, example):
    ids = torch.from_numpy(example.input_ids.astype(np.int64))[None]  # (1, L)
    labels = torch.from_numpy(example.labels.astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]  # (L, V)
    return logits, labels


def _loss_sum(logits, labels):
    """Summed next-token CE over one example's own positions, and its number of targets."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum"), int(
        (labels[1:] != IGNORE_INDEX).sum()
    )


def test_pack_indices_capacity_and_coverage():
    lengths = np.random.default_rng(0).integers(1, 300, size=500).tolist()
    best = pack_indices(lengths, 512)
    seq = pack_indices(lengths, 512, "sequential")
    for packs in (best, seq):
        assert sorted(i for p in packs for i in p) == list(range(500))
        assert all(sum(lengths[i] for i in p) <= 512 for p in packs)
    assert [i for p in seq for i in p] == list(range(500))  # sequential keeps the order
    assert -(-sum(lengths) // 512) <= len(best) <= len(seq)
    assert pack_indices(lengths, 512) == best  # deterministic
    with pytest.raises(ValueError, match="more than the pack length"):
        pack_indices([10, 600], 512)


def test_block_causal_mask_matches_a_loop():
    sequence_ids = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]])
    mask = block_causal_mask(sequence_ids)
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.bool
    for b in range(2):
        for i in range(8):
            for j in range(8):
                si, sj = int(sequence_ids[b, i]), int(sequence_ids[b, j])
                expected = (si >= 0 and si == sj and j <= i) or (si < 0 and i == j)
                assert bool(mask[b, 0, i, j]) == expected


def test_packed_batch_equals_examples_alone(tiny_model, examples):
    packed = PackedDataset(examples, max_length=256)
    assert len(packed) < len(examples)
    batch = collate_packed([packed[i] for i in range(len(packed))], pad_to_multiple_of=8)
    with torch.no_grad():
        out = tiny_model(**batch)
    total_loss, total_targets = 0.0, 0
    for row, pack in enumerate(packed.packs):
        start = 0
        for index in pack:
            example = examples[index]
            n = len(example)
            logits_alone, labels = _alone(tiny_model, example)
            logits_packed = out.logits[row, start : start + n]
            torch.testing.assert_close(logits_packed, logits_alone, atol=ATOL, rtol=0)
            assert batch["position_ids"][row, start : start + n].tolist() == list(range(n))
            assert batch["labels"][row, start : start + n].tolist() == labels.tolist()
            loss_packed, count = _loss_sum(logits_packed, labels)
            loss_alone, _ = _loss_sum(logits_alone, labels)
            torch.testing.assert_close(loss_packed / count, loss_alone / count, atol=ATOL, rtol=0)
            total_loss, total_targets = total_loss + loss_alone, total_targets + count
            start += n
        assert (batch["labels"][row, start:] == IGNORE_INDEX).all()
    # The model's own (shifted, batch-mean) loss: nothing leaks across examples at the seams.
    torch.testing.assert_close(out.loss, total_loss / total_targets, atol=ATOL, rtol=0)


def test_padding_free_batch_equals_examples_alone_in_logits_loss_and_gradients(make_tiny, examples):
    model = make_tiny()
    batch = collate_padding_free(examples)
    total = sum(len(e) for e in examples)
    assert set(batch) == {"input_ids", "position_ids", "labels"} and batch["input_ids"].shape == (1, total)
    assert batch["position_ids"][0].tolist() == [p for e in examples for p in range(len(e))]
    assert batch["labels"][0].tolist() == [int(t) for e in examples for t in e.labels]
    out = model(**batch)
    out.loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total_loss, total_targets, start = 0.0, 0, 0
    for example in examples:
        n = len(example)
        ids = torch.from_numpy(example.input_ids.astype(np.int64))[None]  # (1, n)
        labels = torch.from_numpy(example.labels.astype(np.int64))
        logits = model(input_ids=ids).logits[0]  # (n, V)
        torch.testing.assert_close(out.logits[0, start : start + n].detach(), logits.detach(), atol=ATOL, rtol=0)
        loss_sum, count = _loss_sum(logits, labels)
        total_loss, total_targets, start = total_loss + loss_sum, total_targets + count, start + n
    # The model's own (shifted, mean) loss over the one row: nothing leaks across the seams.
    torch.testing.assert_close(out.loss.detach(), (total_loss / total_targets).detach(), atol=ATOL, rtol=0)
    (total_loss / total_targets).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_padding_free_packs_are_their_examples_in_pack_order(examples):
    packed = PackedDataset(examples, max_length=256)
    packs = [packed[i] for i in range(len(packed))]
    batch = collate_packs_padding_free(packs)
    flat = collate_padding_free([example for pack in packs for example in pack])
    assert batch.keys() == flat.keys() and all(torch.equal(batch[k], flat[k]) for k in batch)
    assert batch["input_ids"].shape == (1, sum(packed.lengths))


def test_padded_batch_equals_rows_alone(tiny_model, examples):
    batch = collate_padded(examples, pad_to_multiple_of=16)
    assert batch["input_ids"].shape[1] % 16 == 0
    with torch.no_grad():
        out = tiny_model(**batch)
    total_loss, total_targets = 0.0, 0
    for row, example in enumerate(examples):
        n = len(example)
        logits_alone, labels = _alone(tiny_model, example)
        torch.testing.assert_close(out.logits[row, :n], logits_alone, atol=ATOL, rtol=0)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all() and (batch["input_ids"][row, n:] == 0).all()
        loss_sum, count = _loss_sum(logits_alone, labels)
        total_loss, total_targets = total_loss + loss_sum, total_targets + count
    torch.testing.assert_close(out.loss, total_loss / total_targets, atol=ATOL, rtol=0)

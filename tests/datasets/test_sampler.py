"""Length-grouped batch sampler: deterministic, complete, low padding, exactly resumable, consistent across ranks."""

import math

import numpy as np
import pytest
from torch.utils.data import DataLoader

from elmtune.datasets import LengthGroupedBatchSampler


@pytest.fixture(scope="module")
def lengths():
    return np.random.default_rng(0).integers(5, 500, size=203).tolist()


def _padding(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_deterministic_complete_and_seeded(lengths):
    a = LengthGroupedBatchSampler(lengths, 8, seed=3)
    b = LengthGroupedBatchSampler(lengths, 8, seed=3)
    first, again = list(a), list(b)
    assert first == again and len(first) == len(a) == math.ceil(203 / 8)
    assert sorted(i for batch in first for i in batch) == list(range(203))
    assert list(a) != first  # the next epoch has another order
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=4)) != first
    # the batch holding the longest example comes first
    assert max(lengths) == max(lengths[i] for i in first[0])


def test_grouping_cuts_padding(lengths):
    grouped = list(LengthGroupedBatchSampler(lengths, 8, seed=0, mega_batch_factor=8))
    plain = list(LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=False))
    assert sorted(i for b in plain for i in b) == list(range(203))
    assert _padding(lengths, grouped) < 0.25 * _padding(lengths, plain)
    in_order = list(LengthGroupedBatchSampler(lengths, 8, shuffle=False))
    assert [i for b in in_order for i in b] == list(range(203))


@pytest.mark.parametrize("stop", [0, 1, 7, 25, 26, 40])
def test_resume_continues_the_exact_order(lengths, stop):
    reference = LengthGroupedBatchSampler(lengths, 8, seed=1)
    expected = list(reference) + list(reference) + list(reference)  # three epochs of 26 batches

    first = LengthGroupedBatchSampler(lengths, 8, seed=1)
    seen = []
    while len(seen) < stop:
        for batch in first:
            seen.append(batch)
            if len(seen) == stop:
                break
    state = first.state_dict()
    assert (state["epoch"], state["batch_index"]) == divmod(stop, 26)

    resumed = LengthGroupedBatchSampler(lengths, 8, seed=1)
    resumed.load_state_dict(state)
    while len(seen) < len(expected):
        seen.extend(resumed)
    assert seen == expected


def test_dataloader_epochs_and_set_epoch(lengths):
    sampler = LengthGroupedBatchSampler(lengths, 16, seed=2)
    loader = DataLoader(list(range(203)), batch_sampler=sampler, collate_fn=list)
    epochs = [[batch for batch in loader] for _ in range(2)]
    reference = LengthGroupedBatchSampler(lengths, 16, seed=2)
    assert epochs == [[b.tolist() for b in reference.global_batches(e)] for e in range(2)]
    sampler.set_position(1, 3)
    sampler.set_epoch(1)  # same epoch: keeps the position
    assert sampler.batch_index == 3
    sampler.set_epoch(2)
    assert (sampler.epoch, sampler.batch_index) == (2, 0)
    with pytest.raises(ValueError, match="outside"):
        sampler.set_position(0, 99)


@pytest.mark.parametrize("count", [203, 208])
def test_ranks_split_the_global_batch(count):
    lengths = np.random.default_rng(1).integers(5, 500, size=count).tolist()
    single = LengthGroupedBatchSampler(lengths, 8, seed=5)
    ranks = [LengthGroupedBatchSampler(lengths, 4, seed=5, num_replicas=2, rank=r) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    partial = 0
    for b0, b1, whole in zip(*ranks, single, strict=True):
        if len(whole) == 8:
            assert b0 + b1 == whole and len(b0) == len(b1) == 4
        else:  # the partial global batch is evened out by repeating the epoch's first example(s)
            partial += 1
            assert len(b0) == len(b1) and len(b0 + b1) == len(whole) + len(whole) % 2
            assert set(whole) <= set(b0 + b1)
    assert partial == (count % 8 != 0)


def test_drop_last_and_state_checks(lengths):
    sampler = LengthGroupedBatchSampler(lengths, 8, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 203 // 8 and all(len(b) == 8 for b in batches)
    other = LengthGroupedBatchSampler(lengths, 8, seed=9)
    with pytest.raises(ValueError, match="saved seed 0, now 9"):
        other.load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="rank"):
        LengthGroupedBatchSampler(lengths, 8, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="no full global batch"):
        LengthGroupedBatchSampler([3, 4], 8, drop_last=True)

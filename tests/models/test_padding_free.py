"""Sequences packed without padding, marked only by restarting ``position_ids`` (transformers' padding-free layout):
each gets the logits it has alone, in one row (attended sequence by sequence) or several (a block-diagonal mask),
also under gradient checkpointing; positions that never restart leave the model's ordinary causal path alone."""

from __future__ import annotations

import pytest
import torch

from elmtune.models.attention_mask import is_packed, packed_rows_mask, packed_segments

LENGTHS = (5, 7, 1, 4)


def _sequences(vocab: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (n,), generator=generator) for n in LENGTHS]


def _positions(lengths) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])  # (T,)


def test_segments_and_masks_are_read_from_restarting_positions():
    positions = _positions(LENGTHS)[None]  # (1, 17)
    assert is_packed(positions, None, past=0) and packed_segments(positions) == LENGTHS
    assert not is_packed(torch.arange(6)[None], None, past=0)  # one sequence
    assert not is_packed(positions, torch.ones(1, 17), past=0)  # a mask decides instead
    assert not is_packed(positions, None, past=3)  # decoding from a cache
    assert packed_segments(torch.tensor([[4, 5, 6, 0, 1, 9]])) == (3, 2, 1)  # any break in the run starts one
    mask = packed_rows_mask(torch.tensor([[0, 1, 0, 1, 2]]))[0, 0]  # (5, 5)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_packed_row_gives_each_sequence_its_own_logits_and_gradients(make_tiny, checkpointing):
    model = make_tiny()
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()  # dropout-free preset: training only switches checkpointing on
    sequences = _sequences(model.config.vocab_size)
    packed = model(torch.cat(sequences)[None], position_ids=_positions(LENGTHS)[None]).logits[0]  # (T, V)
    packed.square().mean().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    alone = torch.cat([model(s[None]).logits[0] for s in sequences])  # (T, V)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    alone.square().mean().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], param.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_several_packed_rows_and_plain_rows(tiny_model):
    sequences = _sequences(tiny_model.config.vocab_size)
    rows = torch.stack(
        [torch.cat([sequences[0], sequences[1], sequences[3]]), torch.cat(sequences[1::-1] + [sequences[3]])]
    )
    positions = torch.stack([_positions((5, 7, 4)), _positions((7, 5, 4))])  # (2, 16)
    with torch.no_grad():
        packed = tiny_model(rows, position_ids=positions, use_cache=False).logits  # (2, 16, V)
        first = torch.cat([tiny_model(sequences[i][None]).logits[0] for i in (0, 1, 3)])
        second = torch.cat([tiny_model(sequences[i][None]).logits[0] for i in (1, 0, 3)])
        plain = tiny_model(rows[:1], use_cache=False).logits  # no positions: one causal sequence
        given = tiny_model(rows[:1], position_ids=torch.arange(16)[None], use_cache=False).logits
    torch.testing.assert_close(packed[0], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[1], second, atol=1e-5, rtol=0)
    assert not torch.allclose(plain[0], first, atol=1e-3)  # the unpacked reading differs after the first sequence
    torch.testing.assert_close(given, plain, atol=0, rtol=0)

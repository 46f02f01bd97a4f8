"""Preference pairs: prompt-masked labels, TRL-style max_length / max_prompt_length handling, the pair collator."""

import numpy as np
import pytest

from elmtune.datasets import (
    IGNORE_INDEX,
    OPENELM_INSTRUCT_CHAT_TEMPLATE,
    DataRowError,
    Message,
    PreferenceExample,
    PreferenceTokenizeConfig,
    collate_preference,
    load_preference_examples,
    tokenize_preference,
)
from elmtune.datasets.preference import prompt_length
from elmtune.errors import UsageError

BIG = PreferenceTokenizeConfig(max_length=100_000, max_prompt_length=50_000)


@pytest.fixture(scope="module")
def pairs(data_dir):
    return load_preference_examples(data_dir / "ultrafeedback_binarized_sample.jsonl")[0]


def test_prompt_is_masked_and_reply_plus_eos_is_the_target(tokenizer, pairs):
    tokenized, report = tokenize_preference(pairs[:40], tokenizer, BIG)
    assert report.kept == 40
    for pair, item in zip(pairs[:40], tokenized, strict=True):
        turns = [{"role": m.role, "content": m.content} for m in pair.prompt]
        prompt = tokenizer.apply_chat_template(
            turns, chat_template=OPENELM_INSTRUCT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt)["input_ids"]
        n = len(prompt_ids)
        for reply, ids, labels in (
            (pair.chosen, item.chosen_input_ids, item.chosen_labels),
            (pair.rejected, item.rejected_input_ids, item.rejected_labels),
        ):
            assert ids[:n].tolist() == prompt_ids and (labels[:n] == IGNORE_INDEX).all()
            targets = np.flatnonzero(labels != IGNORE_INDEX)
            assert targets[0] == n and (np.diff(targets) == 1).all()  # one contiguous run right after the prompt
            assert labels[targets[-1]] == tokenizer.eos_token_id
            assert tokenizer.decode(ids[targets[0] : targets[-1]]) == reply
            assert tokenizer.decode(ids[targets[-1] + 1 :]).strip() == ""  # only the template's newline follows


def _long_pair():
    prompt = " ".join(f"prompt{i}" for i in range(60))
    return PreferenceExample((Message("user", prompt),), " ".join(["good"] * 80), " ".join(["bad"] * 50))


@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_then_reply_truncation(tokenizer, side):
    pair = _long_pair()
    (full,), _ = tokenize_preference([pair], tokenizer, BIG)
    config = PreferenceTokenizeConfig(max_length=64, max_prompt_length=16, prompt_truncation_side=side)
    (item,), report = tokenize_preference([pair], tokenizer, config)
    assert report.truncated == 1 and item.truncated
    for ids, labels, ref_ids, ref_labels in (
        (item.chosen_input_ids, item.chosen_labels, full.chosen_input_ids, full.chosen_labels),
        (item.rejected_input_ids, item.rejected_labels, full.rejected_input_ids, full.rejected_labels),
    ):
        n = prompt_length(ref_labels)
        assert n > 16 and len(ref_ids) > 64
        kept_prompt = [0, *range(n - 15, n)] if side == "left" else list(range(16))
        index = (kept_prompt + list(range(n, len(ref_ids))))[:64]
        assert ids.tolist() == ref_ids[index].tolist() and labels.tolist() == ref_labels[index].tolist()
        assert ids[0] == tokenizer.bos_token_id and prompt_length(labels) == 16


def test_long_reply_short_prompt_keeps_the_prompt(tokenizer):
    pair = PreferenceExample((Message("user", "Hi"),), " ".join(["word"] * 100), "short")
    (full,), _ = tokenize_preference([pair], tokenizer, BIG)
    (item,), _ = tokenize_preference([pair], tokenizer, PreferenceTokenizeConfig(max_length=40, max_prompt_length=20))
    assert item.chosen_input_ids.tolist() == full.chosen_input_ids[:40].tolist()
    assert item.rejected_input_ids.tolist() == full.rejected_input_ids.tolist()  # already short enough


def test_drop_error_and_special_text(tokenizer, pairs):
    config = PreferenceTokenizeConfig(max_length=64, max_prompt_length=16, overlong="drop")
    kept, report = tokenize_preference([_long_pair()], tokenizer, config)
    assert kept == [] and report.dropped_overlong == 1
    with pytest.raises(DataRowError, match="more than max_length 64"):
        tokenize_preference([_long_pair()], tokenizer, PreferenceTokenizeConfig(64, 16, overlong="error"))
    with pytest.raises(DataRowError, match=r"line 41: field 'rejected' contains the special-token text '</s>'"):
        tokenize_preference(pairs, tokenizer, BIG)
    kept, report = tokenize_preference(pairs, tokenizer, BIG, skip_invalid=True)
    assert len(kept) == 40 and report.invalid == 1
    with pytest.raises(UsageError, match="max_prompt_length 100 and max_length 100: pass --max-prompt-length"):
        PreferenceTokenizeConfig(max_length=100, max_prompt_length=100)


def test_collate_pairs(tokenizer, pairs):
    tokenized, _ = tokenize_preference(pairs[:5], tokenizer, PreferenceTokenizeConfig())
    batch = collate_preference(tokenized, pad_to_multiple_of=8)
    longest = max(max(len(p.chosen_input_ids), len(p.rejected_input_ids)) for p in tokenized)
    length = -(-longest // 8) * 8
    for side in ("chosen", "rejected"):
        ids, mask, labels = (batch[f"{side}_{k}"] for k in ("input_ids", "attention_mask", "labels"))
        assert ids.shape == mask.shape == labels.shape == (5, length)
        for i, p in enumerate(tokenized):
            n = len(getattr(p, f"{side}_input_ids"))
            assert ids[i, :n].tolist() == getattr(p, f"{side}_input_ids").tolist()
            assert labels[i, :n].tolist() == getattr(p, f"{side}_labels").tolist()
            assert mask[i].tolist() == [1] * n + [0] * (length - n)
            assert (ids[i, n:] == 0).all() and (labels[i, n:] == IGNORE_INDEX).all()


def test_identical_pairs_are_skipped_and_counted(tokenizer, pairs):
    import dataclasses

    same = [dataclasses.replace(p, rejected=p.chosen) for p in pairs[:3]]
    mixed = [pairs[3], same[0], pairs[4], same[1], same[2]]
    kept, report = tokenize_preference(mixed, tokenizer, BIG)
    assert report.dropped_identical == 3 and report.kept == 2
    assert [k.where for k in kept] == [pairs[3].where, pairs[4].where]  # the others, in order

"""One-call preparation: config validation, SFT (padded or packed) and preference data, hold-out split, DataLoader."""

import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from elmtune.datasets import (
    DataConfig,
    LengthGroupedBatchSampler,
    PackedDataset,
    TokenizedExample,
    TokenizedPair,
    holdout_split,
    prepare_data,
)
from elmtune.datasets.errors import DataSourceError


def test_config_validation():
    for bad, match in [
        ({"format": "sharegpt"}, "format"),
        ({"template": "llama2"}, "template"),
        ({"overlong": "wrap"}, "overlong"),
        ({"max_length": 1}, "max_length"),
        ({"validation_size": 1.5}, "validation_size"),
        ({"validation_size": -1}, "validation_size"),
        ({"format": "preference", "packing": True}, "packing"),
        ({"format": "preference", "padding_free": True}, "padding_free is for SFT data"),
        ({"padding_free": True, "pad_to_multiple_of": 8}, "padding_free pads nothing"),
    ]:
        with pytest.raises(ValueError, match=match):
            DataConfig(path="x.jsonl", **bad)


def test_holdout_split_is_deterministic_and_disjoint():
    train, val = holdout_split(100, 0.1, seed=3)
    assert len(val) == 10 and sorted(train + val) == list(range(100))
    assert holdout_split(100, 0.1, seed=3) == (train, val) and holdout_split(100, 0.1, seed=4) != (train, val)
    assert holdout_split(100, 7, seed=0)[1].__len__() == 7 and holdout_split(10, 0, seed=0) == (list(range(10)), [])
    with pytest.raises(DataSourceError, match="leaves no training example out of 5; use a smaller --validation-size"):
        holdout_split(5, 5, seed=0)


def test_prepare_alpaca_padded_with_holdout(tokenizer, data_dir):
    config = DataConfig(path=str(data_dir / "alpaca_en_demo_first200.json"), max_length=256, validation_size=0.1)
    data = prepare_data(config, tokenizer)
    assert data.kind == "sft" and not data.packed and data.load_report.format == "alpaca"
    assert len(data.train) == 180 and len(data.validation) == 20
    assert isinstance(data.train[0], TokenizedExample)
    assert data.train_lengths == [len(x) for x in data.train]
    assert {x.where for x in data.train}.isdisjoint({x.where for x in data.validation})
    assert "200 rows" in data.summary() and "truncated" in data.summary()

    pickle.dumps(data.collate)  # DataLoader workers need it
    sampler = LengthGroupedBatchSampler(data.train_lengths, 4, seed=0)
    batch = next(iter(DataLoader(data.train, batch_sampler=sampler, collate_fn=data.collate)))
    assert batch["input_ids"].shape[0] == 4 and batch["attention_mask"].dim() == 2


def test_prepare_commonsense_packed_apple_style(tokenizer, data_dir):
    config = DataConfig(
        path=str(data_dir / "commonsense_train_sample200.json"), max_length=512, packing=True, train_on_prompt=True
    )
    data = prepare_data(config, tokenizer)
    assert isinstance(data.train, PackedDataset) and data.packed
    assert sum(len(pack) for pack in data.train) == 200 and all(n <= 512 for n in data.train_lengths)
    assert data.tokenize_report.target_tokens == data.tokenize_report.tokens - 200  # all but each BOS
    batch = data.collate([data.train[0], data.train[1]])
    assert batch["attention_mask"].shape[1:] == (1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    assert batch["position_ids"].dtype == torch.long


def test_prepare_preference_auto(tokenizer, data_dir):
    config = DataConfig(
        path=str(data_dir / "ultrafeedback_binarized_sample.jsonl"),
        max_length=512,
        max_prompt_length=128,
        skip_invalid=True,
    )
    data = prepare_data(config, tokenizer)
    assert data.kind == "preference" and isinstance(data.train[0], TokenizedPair)
    assert len(data.train) == 40 and data.tokenize_report.invalid == 1
    assert all(n <= 512 for n in data.train_lengths)
    batch = data.collate(data.train[:3])
    assert set(batch) == {f"{s}_{k}" for s in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "labels")}


def test_nothing_left_is_a_clear_error(tokenizer, data_dir):
    from elmtune.datasets import DataSourceError

    config = DataConfig(path=str(data_dir / "alpaca_en_demo_first200.json"), max_length=8, limit=3)
    with pytest.raises(DataSourceError, match="no example left .*3 with no target within max_length 8"):
        prepare_data(config, tokenizer)

"""Fixtures for training tests: a tiny model, the real commonsense training sample, short sequences."""

from pathlib import Path

import pytest

from elmtune.adapters import AdapterConfig
from elmtune.datasets import DataConfig
from elmtune.finetune.config import RunConfig, TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
COMMONSENSE = FIXTURES / "commonsense_train_sample200.json"


@pytest.fixture
def commonsense_path():
    return COMMONSENSE


@pytest.fixture
def make_config(tmp_path):
    def make(name="run", data=None, adapter=None, **train):
        train = {
            "output_dir": str(tmp_path / name),
            "batch_size": 4,
            "max_steps": 4,
            "lr": 1e-2,
            "warmup": 0,
            "log_every": 1,
            "device": "cpu",
            **train,
        }
        data = {"path": str(COMMONSENSE), "max_length": 64, "limit": 48, "train_on_prompt": True, **(data or {})}
        adapter = {"r": 4, "alpha": 8, "dropout": 0.0, **(adapter or {})}
        return RunConfig(
            model="tiny", data=DataConfig(**data), adapter=AdapterConfig(**adapter), train=TrainConfig(**train)
        )

    return make

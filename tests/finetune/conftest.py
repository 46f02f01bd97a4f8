"""Fixtures for training tests: a tiny model, the real commonsense training sample, short sequences."""

import dataclasses
import sys
from pathlib import Path

import pytest

from elmtune.adapters import AdapterConfig
from elmtune.datasets import DataConfig
from elmtune.finetune.config import RunConfig, TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
COMMONSENSE = FIXTURES / "commonsense_train_sample200.json"
PAIRS = FIXTURES / "ultrafeedback_binarized_sample.jsonl"
PAIR_DATA = {
    "path": str(PAIRS),
    "max_length": 96,
    "max_prompt_length": 48,
    "limit": 12,
    "skip_invalid": True,
    "train_on_prompt": False,
}
"""A few short preference pairs (seconds per run on the tiny preset)."""
TRAIN_FLAGS = {
    "batch-size": "4",
    "limit": "48",
    "max-length": "64",
    "rank": "4",
    "alpha": "8",
    "dropout": "0",
    "lr": "1e-2",
    "warmup": "0",
    "device": "cpu",
}
"""``elmtune train`` flags with :func:`make_config`'s settings (with ``--train-on-prompt`` and the sample data)."""


def _train_command(run_dir: Path, *extra: str, **flags: object) -> list[str]:
    """``python -m elmtune.cli train`` on the tiny preset and :data:`COMMONSENSE`, as :func:`make_config` sets it up.

    Keywords replace flags (``max_steps=8`` is ``--max-steps 8``); ``extra`` arguments come last.
    """
    settings = {**TRAIN_FLAGS, **{name.replace("_", "-"): str(value) for name, value in flags.items()}}
    command = [sys.executable, "-m", "elmtune.cli", "train", "-m", "tiny", "-d", str(COMMONSENSE), "-o", str(run_dir)]
    for name, value in settings.items():
        command += [f"--{name}", value]
    return [*command, "--train-on-prompt", *extra]


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


@pytest.fixture(scope="session")
def train_command():
    """``train_command(run_dir, *extra, **flags)``: the ``elmtune train`` command line of :func:`make_config`'s run."""
    return _train_command


@pytest.fixture(scope="session")
def sft_adapter(tmp_path_factory, trained_adapter):
    """A saved LoRA adapter on the tiny preset with non-zero B, as after SFT (r 4, alpha 8, no dropout)."""
    out = tmp_path_factory.mktemp("sft") / "adapter"
    return trained_adapter(Path("tiny"), out, base_name="tiny", scale=0.2, r=4, alpha=8, dropout=0.0)


@pytest.fixture
def make_dpo_config(make_config):
    """``make_dpo_config(name, **train)``: a sigmoid DPO run on :data:`PAIR_DATA` (``start_from`` may be given)."""

    def make(name="dpo", start_from=None, data=None, **train):
        settings = {"objective": "dpo", "beta": 0.5, "max_steps": 2, "lr": 2e-2, **train}
        config = make_config(name, data={**PAIR_DATA, **(data or {})}, **settings)
        return dataclasses.replace(config, start_from=None if start_from is None else str(start_from))

    return make

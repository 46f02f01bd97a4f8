"""The real-data training run every side of the ``real-data`` and ``scale`` groups does: one recipe, two spellings.

The run is Apple's commonsense LoRA recipe (``recipes/openelm-270M-lora-commonsense.yaml``: targets ``apple``,
alpha = r, dropout 0.1, the alpaca template, loss on every token, AdamW and the cosine schedule) on the first
``settings.examples`` rows of ``benchmarks/data/commonsense_train_sample2000.json``, with the benchmark's overrides:
the preset (random weights), fp32 on the CPU, max length ``settings.real_max_length``, ``settings.r``, micro-batch
``settings.real_batch`` times ``settings.real_accum`` accumulation, and one pass over the examples. The overrides are
written once (:func:`overrides`); :func:`run_config` reads them into the ``RunConfig`` the peer trainers take their
settings from, and :func:`train_flags` spells them as ``elmtune train`` flags.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from suite.settings import BENCHMARKS, ROOT, Settings

RECIPE = ROOT / "recipes" / "openelm-270M-lora-commonsense.yaml"
DATA = BENCHMARKS / "data" / "commonsense_train_sample2000.json"
DATA_ROWS = 2000
"""Rows in :data:`DATA`: the most ``--examples`` can be."""

FLAGS = {
    "model": "--model",
    "data.path": "--data",
    "data.limit": "--limit",
    "data.max_length": "--max-length",
    "adapter.r": "--rank",
    "adapter.alpha": "--alpha",
    "train.batch_size": "--batch-size",
    "train.grad_accum": "--grad-accum",
    "train.max_steps": "--max-steps",
    "train.log_every": "--log-every",
    "train.save_every": "--save-every",
    "train.device": "--device",
    "train.precision": "--precision",
    "train.output_dir": "--output-dir",
}
"""The ``elmtune train`` flag of every overridden recipe key (booleans are spelled ``--x`` / ``--no-x``)."""


def global_batch(settings: Settings, processes: int = 1) -> int:
    """Examples per optimizer step: micro-batch x accumulation x processes."""
    return settings.real_batch * settings.real_accum * processes


def optimizer_steps(settings: Settings) -> int:
    """Steps of one pass over ``settings.examples`` at the global batch (the last step may be short)."""
    return math.ceil(settings.examples / global_batch(settings))


def overrides(
    settings: Settings, output_dir: str | Path, *, checkpointing: bool = False, processes: int = 1
) -> dict[str, Any]:
    """The recipe keys the benchmark sets, dotted (``train.lr``), for ``processes`` data-parallel processes.

    With several processes each takes ``real_accum / processes`` micro-batches per step (at least one), so the global
    batch stays ``real_batch x real_accum``.
    """
    accumulation = max(1, settings.real_accum // processes)
    return {
        "model": settings.preset,
        "data.path": str(DATA),
        "data.limit": settings.examples,
        "data.max_length": settings.real_max_length,
        "adapter.r": settings.r,
        "adapter.alpha": float(settings.r),
        "train.batch_size": settings.real_batch,
        "train.grad_accum": accumulation,
        "train.max_steps": optimizer_steps(settings),
        "train.log_every": 1,
        "train.save_every": 0,
        "train.device": "cpu",
        "train.precision": "fp32",
        "train.output_dir": str(output_dir),
        "train.gradient_checkpointing": checkpointing,
    }


def run_config(settings: Settings, output_dir: str | Path, *, checkpointing: bool = False) -> Any:
    """The recipe with the benchmark's overrides, as elmtune reads it (``elmtune.finetune.config.RunConfig``)."""
    from elmtune.finetune.config import load_run_config

    return load_run_config(RECIPE, overrides(settings, output_dir, checkpointing=checkpointing))


def train_flags(
    settings: Settings, output_dir: str | Path, *, checkpointing: bool = False, processes: int = 1
) -> list[str]:
    """``elmtune train`` arguments for the same run: the recipe, then every override as its flag."""
    argv = ["train", "--config", str(RECIPE)]
    for key, value in overrides(settings, output_dir, checkpointing=checkpointing, processes=processes).items():
        if isinstance(value, bool):
            flag = "--" + key.partition(".")[2].replace("_", "-")
            argv.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            argv += [FLAGS[key], str(value)]
    if processes > 1:
        argv += ["--num-processes", str(processes)]
    return argv

"""Run configuration: typed, frozen sections read from a YAML recipe, overridden by command-line flags.

A recipe has four sections, each a frozen dataclass with its own validation::

    model: apple/OpenELM-270M          # preset, hub id or directory
    adapter: {method: lora, r: 32, ...}      # elmtune.adapters.AdapterConfig
    data: {path: train.json, ...}            # elmtune.datasets.DataConfig
    train: {lr: 3e-4, ...}                   # TrainConfig below

Every section is read by :func:`elmtune.config_mapping.section_from_mapping`: unknown keys are an error that names the
section and lists the known keys, and every error is a :class:`~elmtune.errors.ConfigError` naming the key.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from elmtune.adapters.config import AdapterConfig
from elmtune.config_mapping import require, section_from_mapping, section_to_dict
from elmtune.datasets.config import DataConfig
from elmtune.errors import ConfigError
from elmtune.finetune.trackers import TRACKER_PACKAGES
from elmtune.recipe_yaml import read_config_file


def _tracker_names(report_to: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` or ``["tensorboard", "mlflow"]`` -> the tracker names, in order, each once.

    Raises:
        ConfigError: A name that is not a known tracker (``none`` alone means no tracker).
    """
    items = [report_to] if isinstance(report_to, str) else list(report_to)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"train.report_to must be tracker names, got {report_to!r}", key="train.report_to")
    names = [name.strip().lower() for item in items for name in item.split(",") if name.strip()]
    if names == ["none"]:
        return ()
    unknown = [name for name in names if name not in TRACKER_PACKAGES]
    if unknown:
        raise ConfigError(
            f"train.report_to {unknown[0]!r} is not a tracker; choose from {', '.join(TRACKER_PACKAGES)} (or none)",
            key="train.report_to",
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run.

    Attributes:
        output_dir: The run directory (config, metrics, checkpoints, final adapter, loss curve).
        objective: ``sft`` (masked next-token cross-entropy) or ``dpo`` (preference optimisation on pairs; the data
            must be preference pairs).
        preference_loss: ``sigmoid`` (DPO), ``hinge`` or ``ipo``.
        beta: Preference temperature / inverse margin (Apple's OpenELM-Instruct recipe: 0.01).
        label_smoothing: Conservative DPO: the assumed probability that a pair's labels are flipped, in ``[0, 0.5)``
            (``sigmoid`` only).
        precompute_reference: Compute every training pair's reference log-probabilities once before training and
            cache them in the run directory (``dpo`` only); the steps then run only the policy forward.
        share_prompt: ``dpo``: compute each pair's shared prompt once, one row per pair with a mask that keeps the
            chosen and rejected responses apart; the same loss from fewer positions. False: two rows per pair.
        batch_size: Examples per micro-batch on one process.
        grad_accum: Micro-batches per optimizer step (the gradient equals the large-batch gradient).
        max_steps: Optimizer steps; when unset, ``epochs`` decides.
        epochs: Passes over the training data (fractions allowed) when ``max_steps`` is unset.
        lr: Peak learning rate.
        min_lr: Learning rate at the end of a decaying schedule.
        schedule: ``cosine``, ``linear`` or ``constant`` after warm-up.
        warmup: Warm-up as steps (int) or as a fraction of the run (float in [0, 1)).
        warmup_init_lr: Learning rate at step 0 of the warm-up.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        eps: AdamW epsilon.
        max_grad_norm: Clip the global gradient norm to this (0 disables clipping; the norm is still logged).
        skip_nonfinite: Steps with a NaN or infinite loss or gradient norm that may be skipped (no update, counted
            in ``metrics.jsonl``) before the run stops; 0 stops at the first one.
        z_loss: Coefficient of the z-loss (``logsumexp(logits)^2`` per target token); Apple's recipe uses 1e-4.
        seed: Seed of initialisation, data order and dropout.
        group_by_length: Batch examples of similar length together (less padding).
        log_every: Log metrics every N optimizer steps.
        report_to: Experiment trackers that also receive the metrics and the configuration: ``tensorboard``,
            ``wandb`` and/or ``mlflow`` (files under ``trackers/`` in the run directory; see
            :mod:`elmtune.finetune.trackers`). A comma-separated string is accepted; empty or ``none``: no tracker.
        eval_every: Evaluate on the validation split every N steps (0: only at the end, if there is one).
        save_every: Write a checkpoint every N steps (0: only at the end).
        keep_last: Keep this many newest checkpoints.
        device: ``auto`` (cuda > mps > cpu) or a device name.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` compute.
        base_dtype: dtype of the frozen base weights: ``auto``, ``fp32``, ``bf16`` or ``fp16``; or a quantised base
            (QLoRA, needs ``elmtune[qlora]``): ``nf4`` (4-bit NormalFloat, double quantisation) or ``int8``, with the
            Linear layers quantised and embeddings, norms and head in the compute dtype.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
    """

    output_dir: str = "runs/elmtune"
    objective: Literal["sft", "dpo"] = "sft"
    preference_loss: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    precompute_reference: bool = False
    share_prompt: bool = True
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    lr: float = 2e-4
    min_lr: float = 0.0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: int | float = 0.03
    warmup_init_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    skip_nonfinite: int = 0
    z_loss: float = 0.0
    seed: int = 0
    group_by_length: bool = True
    log_every: int = 1
    report_to: tuple[str, ...] = ()
    eval_every: int = 0
    save_every: int = 0
    keep_last: int = 2
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    base_dtype: Literal["auto", "fp32", "bf16", "fp16", "nf4", "int8"] = "auto"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "report_to", _tracker_names(self.report_to))
        precisions = ("auto", "fp32", "bf16", "fp16")
        require(
            "train",
            [
                (self.objective in ("sft", "dpo"), "objective", f"must be sft or dpo, got {self.objective!r}"),
                (
                    self.preference_loss in ("sigmoid", "hinge", "ipo"),
                    "preference_loss",
                    f"must be sigmoid, hinge or ipo, got {self.preference_loss!r}",
                ),
                (self.beta > 0, "beta", f"must be positive, got {self.beta}"),
                (
                    0 <= self.label_smoothing < 0.5,
                    "label_smoothing",
                    f"must lie in [0, 0.5), got {self.label_smoothing}",
                ),
                (
                    not self.label_smoothing or self.preference_loss == "sigmoid",
                    "label_smoothing",
                    f"applies to the sigmoid (DPO) loss only, not {self.preference_loss!r}",
                ),
                (
                    not self.precompute_reference or self.objective == "dpo",
                    "precompute_reference",
                    "applies to --objective dpo only (SFT has no reference model)",
                ),
                (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size", "and grad_accum must be >= 1"),
                (self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1 (or unset: use epochs)"),
                (self.epochs > 0, "epochs", f"must be positive, got {self.epochs}"),
                (self.lr > 0 and 0 <= self.min_lr <= self.lr, "lr", "and min_lr: need lr > 0 and 0 <= min_lr <= lr"),
                (
                    self.schedule in ("cosine", "linear", "constant"),
                    "schedule",
                    f"must be cosine, linear or constant, got {self.schedule!r}",
                ),
                (self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}"),
                (
                    len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                    "betas",
                    f"must be two numbers in [0, 1), got {list(self.betas)}",
                ),
                (self.weight_decay >= 0, "weight_decay", "must be >= 0 (negative coefficient)"),
                (self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (negative coefficient; 0 disables clipping)"),
                (self.z_loss >= 0, "z_loss", "must be >= 0 (negative coefficient)"),
                (self.log_every >= 1, "log_every", "must be >= 1"),
                (self.keep_last >= 1, "keep_last", "must be >= 1"),
                (self.eval_every >= 0, "eval_every", "must be >= 0"),
                (self.save_every >= 0, "save_every", "must be >= 0"),
                (self.skip_nonfinite >= 0, "skip_nonfinite", "must be >= 0"),
                (self.precision in precisions, "precision", f"must be auto, fp32, bf16 or fp16: {self.precision!r}"),
                (
                    self.base_dtype in (*precisions, "nf4", "int8"),
                    "base_dtype",
                    f"must be auto, fp32, bf16, fp16, nf4 or int8: {self.base_dtype!r}",
                ),
            ],
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved as ``config.yaml`` in the run directory and every checkpoint.

    Attributes:
        model: Preset, hub id or model directory.
        data: The data settings.
        adapter: The adapter settings (with ``start_from``: those of the saved adapter).
        train: Optimisation and bookkeeping settings.
        start_from: A saved adapter directory to continue from (SFT -> DPO, or more SFT): the policy starts from its
            weights, and a ``dpo`` run's reference is the base plus a frozen copy of it.
    """

    model: str
    data: DataConfig
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    start_from: str | None = None

    def __post_init__(self) -> None:
        if self.train.base_dtype in ("nf4", "int8") and self.adapter.rewrites_base:
            raise ConfigError(
                f"adapter.init {self.adapter.init} rewrites the base weights, which a quantised base (train.base_dtype "
                f"{self.train.base_dtype}) cannot hold; use init default or a full-precision base",
                key="adapter.init",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values."""
        return {
            "model": self.model,
            "adapter": section_to_dict(self.adapter),
            "data": section_to_dict(self.data),
            "train": section_to_dict(self.train),
            "start_from": self.start_from,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from nested mappings; unknown keys are an error.

        Raises:
            ConfigError: Unknown keys, missing ``model``/``data.path``, or invalid values.
        """
        unknown = sorted(set(data) - set(SECTIONS) - {"model", "start_from"})
        if unknown:
            raise ConfigError(
                f"unknown recipe section(s) {', '.join(map(repr, unknown))}; known: model, adapter, data, train, "
                "start_from",
                key=unknown[0],
            )
        if not data.get("model"):
            raise ConfigError("model is required: a preset, hub id or directory", key="model")
        start_from = data.get("start_from")
        if start_from is not None and (not isinstance(start_from, str) or not start_from):
            raise ConfigError(f"start_from must be an adapter directory, got {start_from!r}", key="start_from")
        sections = {name: section_from_mapping(kind, data.get(name) or {}, name) for name, kind in SECTIONS.items()}
        return cls(model=str(data["model"]), start_from=start_from, **sections)


SECTIONS: dict[str, type] = {"adapter": AdapterConfig, "data": DataConfig, "train": TrainConfig}
"""The dataclass of each section of a recipe, by section name."""


def load_run_config(recipe: str | Path | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML recipe (optional) and apply dotted overrides such as ``{"train.lr": 1e-4, "model": "tiny"}``.

    Flags win over the YAML, which wins over the defaults.

    Raises:
        ConfigError: Unreadable YAML, unknown keys or invalid values; an error about a key the recipe set starts
            with the recipe's path.
    """
    data = read_config_file(recipe, "recipe") if recipe is not None else {}
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key:
            data[section] = value
            continue
        if data.get(section) is None:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise ConfigError(f"{recipe}: {section} must be a mapping of settings", key=section)
        data[section][key] = value
    try:
        return RunConfig.from_dict(data)
    except ConfigError as err:
        if recipe is None or err.key in overrides:
            raise
        raise ConfigError(f"{recipe}: {err}", key=err.key) from None

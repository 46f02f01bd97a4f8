"""Run configuration: typed, frozen sections read from a YAML recipe, overridden by command-line flags.

A recipe has four sections, each a frozen dataclass with its own validation::

    model: apple/OpenELM-270M          # preset, hub id or directory
    adapter: {method: lora, r: 32, ...}      # elmtune.adapters.AdapterConfig
    data: {path: train.json, ...}            # elmtune.datasets.DataConfig
    train: {lr: 3e-4, ...}                   # TrainConfig below

Unknown keys anywhere are an error that names the section and lists the known keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from elmtune.adapters.config import AdapterConfig
from elmtune.datasets.prepare import DataConfig
from elmtune.errors import ElmtuneError, UsageError
from elmtune.recipe_yaml import load_recipe_yaml


class ConfigError(UsageError):
    """A recipe or flag value is invalid."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run.

    Attributes:
        output_dir: The run directory (config, metrics, checkpoints, final adapter, loss curve).
        objective: ``sft`` (masked next-token cross-entropy) or ``dpo`` (preference optimisation on pairs; the data
            must be preference pairs).
        preference_loss: ``sigmoid`` (DPO), ``hinge`` or ``ipo``.
        beta: Preference temperature / inverse margin (Apple's OpenELM-Instruct recipe: 0.01).
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
        eval_every: Evaluate on the validation split every N steps (0: only at the end, if there is one).
        save_every: Write a checkpoint every N steps (0: only at the end).
        keep_last: Keep this many newest checkpoints.
        device: ``auto`` (cuda > mps > cpu) or a device name.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` compute.
        base_dtype: dtype of the frozen base weights: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
    """

    output_dir: str = "runs/elmtune"
    objective: Literal["sft", "dpo"] = "sft"
    preference_loss: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    beta: float = 0.1
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
    eval_every: int = 0
    save_every: int = 0
    keep_last: int = 2
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    base_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        checks = [
            (self.objective in ("sft", "dpo"), "objective must be sft or dpo"),
            (self.preference_loss in ("sigmoid", "hinge", "ipo"), "preference_loss must be sigmoid, hinge or ipo"),
            (self.beta > 0, "beta must be positive"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.epochs > 0, "epochs must be positive"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr"),
            (self.schedule in ("cosine", "linear", "constant"), "schedule must be cosine, linear or constant"),
            (self.warmup >= 0, "warmup must be >= 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
            (self.weight_decay >= 0 and self.max_grad_norm >= 0 and self.z_loss >= 0, "negative coefficient"),
            (min(self.log_every, self.keep_last) >= 1, "log_every and keep_last must be >= 1"),
            (min(self.eval_every, self.save_every) >= 0, "eval_every and save_every must be >= 0"),
            (self.skip_nonfinite >= 0, "skip_nonfinite must be >= 0"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be auto, fp32, bf16 or fp16"),
            (self.base_dtype in ("auto", "fp32", "bf16", "fp16"), "base_dtype must be auto, fp32, bf16 or fp16"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train: {message}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved as ``config.yaml`` in the run directory and every checkpoint."""

    model: str
    data: DataConfig
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values."""
        return {
            "model": self.model,
            "adapter": self.adapter.to_dict(),
            "data": _plain(dataclasses.asdict(self.data)),
            "train": _plain(dataclasses.asdict(self.train)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from nested mappings; unknown keys are an error.

        Raises:
            ConfigError: Unknown keys, missing ``model``/``data.path``, or invalid values.
        """
        unknown = sorted(set(data) - {"model", "adapter", "data", "train"})
        if unknown:
            raise ConfigError(
                f"unknown recipe section(s) {', '.join(map(repr, unknown))}; known: model, adapter, data, train"
            )
        if not data.get("model"):
            raise ConfigError("the recipe names no model (model: a preset, hub id or directory)")
        try:
            adapter = AdapterConfig.from_dict(data.get("adapter") or {})
        except ElmtuneError as err:
            raise ConfigError(f"adapter: {err}") from None
        return cls(
            model=str(data["model"]),
            adapter=adapter,
            data=section_from_dict(DataConfig, data.get("data") or {}, "data"),
            train=section_from_dict(TrainConfig, data.get("train") or {}, "train"),
        )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML or flag value against a field's type: ints become floats where a float is expected, lists become
    tuples; ``Literal`` fields are left to the dataclass's own validation."""
    origin = typing.get_origin(annotation)
    allowed = set(typing.get_args(annotation)) if origin in (types.UnionType, typing.Union) else {annotation}
    if value is None:
        if type(None) not in allowed:
            raise ConfigError(f"{where} cannot be null")
        return None
    if isinstance(value, bool):
        if bool in allowed or any(typing.get_origin(a) is Literal for a in allowed):
            return value
        raise ConfigError(f"{where} must not be true/false, got {value!r}")
    if isinstance(value, int) and int not in allowed and float in allowed:
        return float(value)
    if isinstance(value, list) and any(typing.get_origin(a) is tuple for a in allowed):
        return tuple(value)
    simple = {a for a in allowed if a in (int, float, str)}
    if simple and not isinstance(value, tuple(simple)) and not any(typing.get_origin(a) for a in allowed):
        names = " or ".join(sorted(a.__name__ for a in simple))
        raise ConfigError(f"{where} must be {names}, got {value!r}")
    if bool in allowed and len(allowed) == 1:
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def section_from_dict(cls: type, data: Mapping[str, Any], section: str) -> Any:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and bad values raise :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section} must be a mapping of settings, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {section} key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    annotations = typing.get_type_hints(cls)
    values = {k: _coerce(v, annotations[k], f"{section}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section}: {err}") from None


def load_run_config(recipe: str | Path | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML recipe (optional) and apply dotted overrides such as ``{"train.lr": 1e-4, "model": "tiny"}``.

    Flags win over the YAML, which wins over the defaults.

    Raises:
        ConfigError: Unreadable YAML, unknown keys or invalid values.
    """
    data: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            what = "is a directory, not a recipe file" if path.is_dir() else "does not exist"
            raise ConfigError(f"recipe {path} {what}")
        try:
            data = load_recipe_yaml(path) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping with model/adapter/data/train sections")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            data[section] = value
        else:
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"{section} must be a mapping")
            data[section][key] = value
    try:
        return RunConfig.from_dict(data)
    except ConfigError as err:
        if recipe is None:
            raise
        raise ConfigError(f"{recipe}: {err}") from None

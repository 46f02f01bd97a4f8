"""``BuildRecipe``: a model build as an ordered list of named stages, read from YAML and checked before any work.

A build recipe::

    model: apple/OpenELM-270M     # preset, hub id or directory: the base of every stage that names no other
    tokenizer: null               # optional: the tokenizer of the eval and generate stages
    stages:
      - name: sft
        kind: sft                 # sft | dpo | eval | merge | export | generate
        adapter: {r: 32, alpha: 32}     # the settings, in the keys of the stage's command's config
        data: {path: train.json, format: commonsense}
        train: {max_steps: 4375}
      - name: merge
        kind: merge
        adapter: "@sft"           # "@NAME": the output of the earlier stage NAME
        dtype: bf16

Each stage's settings are read into the config dataclass of its command (``RunConfig``, ``EvalConfig``,
``MergeOptions``, :class:`~elmtune.build.export_settings.ExportSettings`, ``GenerationRequest``) by
:func:`elmtune.config_mapping.section_from_mapping`, so the keys, checks and messages are those of the commands. Every
error is a one-line :class:`~elmtune.errors.ConfigError` naming the stage and the key. This module imports neither
torch nor transformers; only a ``merge`` stage's settings load the merge module (and torch) to be checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from elmtune.build.export_settings import ExportSettings
from elmtune.build.references import check_references, references_of
from elmtune.config_mapping import section_from_mapping, section_to_dict
from elmtune.errors import ConfigError, UsageError
from elmtune.evaluation.config import EvalConfig
from elmtune.finetune.config import RunConfig
from elmtune.recipe_yaml import read_config_file
from elmtune.shipped_files import locate_config

StageKind = Literal["sft", "dpo", "eval", "merge", "export", "generate"]
OutputKind = Literal["adapter", "results", "model", "gguf", "replies"]

OUTPUTS: dict[str, str] = {
    "sft": "adapter",
    "dpo": "adapter",
    "eval": "results",
    "merge": "model",
    "export": "gguf",
    "generate": "replies",
}
"""What each stage kind yields: an adapter (the run's ``final/``), evaluation results, a merged model directory, a
GGUF file, or a JSONL of replies."""

INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "sft": ("model", "start_from"),
    "dpo": ("model", "start_from"),
    "eval": ("model", "adapter", "tokenizer"),
    "merge": ("model", "adapter"),
    "export": ("model",),
    "generate": ("model", "adapter", "tokenizer"),
}
"""The keys of each stage kind that name a model, an adapter or a tokenizer (an earlier stage's output or a path)."""

TOP_LEVEL_KEYS = ("model", "tokenizer", "stages")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Stage:
    """One step of a build.

    Attributes:
        name: Unique within the recipe; the stage's directory is ``NN-name``.
        kind: ``sft``, ``dpo``, ``eval``, ``merge``, ``export`` or ``generate``.
        model: The model the stage works on: a preset, hub id or directory, or ``@NAME`` (a merge stage's output).
        adapter: The adapter: for ``eval``, ``merge`` and ``generate`` the one applied to ``model``, for ``sft`` and
            ``dpo`` the one training starts from (their ``start_from`` key); a directory or ``@NAME``.
        tokenizer: The tokenizer of an ``eval`` or ``generate`` stage (None: the model's own or the bundled one).
        settings: The command's settings: ``RunConfig`` (sft, dpo), ``EvalConfig``, ``MergeOptions``,
            ``ExportSettings`` or the generation request.
    """

    name: str
    kind: StageKind
    model: str
    adapter: str | None
    tokenizer: str | None
    settings: Any

    @property
    def output_kind(self) -> str:
        """What the stage yields (see :data:`OUTPUTS`)."""
        return OUTPUTS[self.kind]

    def references(self) -> dict[str, str]:
        """Recipe key -> the name of the earlier stage whose output it uses (``{"start_from": "sft"}``)."""
        return references_of(self.inputs())

    def inputs(self) -> dict[str, str]:
        """The stage's input keys as written in the recipe (those given), with their values."""
        values = {"model": self.model, "adapter": self.adapter, "tokenizer": self.tokenizer}
        if self.kind in ("sft", "dpo"):
            values["start_from"] = values.pop("adapter")
        return {key: value for key, value in values.items() if value is not None and key in INPUT_KEYS[self.kind]}

    def settings_dict(self) -> dict[str, Any]:
        """The stage's settings as plain YAML-ready values (what its fingerprint covers)."""
        return section_to_dict(self.settings)


@dataclass(frozen=True)
class BuildRecipe:
    """A build: the base model and the stages, in order.

    Attributes:
        model: The base model of every stage that names no other.
        stages: The stages, in the order they run.
        tokenizer: The tokenizer of the eval and generate stages that name no other.
        source: The recipe file, for messages.
    """

    model: str
    stages: tuple[Stage, ...]
    tokenizer: str | None = None
    source: str | None = None

    def index(self, name: str) -> int:
        """The position of the stage ``name``.

        Raises:
            ConfigError: No stage has that name.
        """
        for position, stage in enumerate(self.stages):
            if stage.name == name:
                return position
        names = ", ".join(stage.name for stage in self.stages)
        raise ConfigError(f"--from {name}: no stage of that name; the stages are {names}", key="from")


def _train_settings(kind: str, model: str, settings: dict[str, Any]) -> RunConfig:
    if isinstance(settings.get("adapter"), str):
        raise ConfigError(
            "adapter is the adapter settings section of an sft/dpo stage; to continue from an earlier stage's "
            "adapter write start_from: '@NAME'",
            key="adapter",
        )
    train = settings.get("train") or {}
    if not isinstance(train, Mapping):
        raise ConfigError(f"train must be a mapping of settings, got {type(train).__name__}", key="train")
    if "output_dir" in train:
        raise ConfigError("train.output_dir is set by the build (DIR/NN-name); leave it out", key="train.output_dir")
    if train.get("objective", kind) != kind:
        raise ConfigError(f"train.objective of a {kind} stage is {kind}, got {train['objective']!r}", key="train")
    return RunConfig.from_dict({**settings, "model": model, "train": {**train, "objective": kind}})


def _eval_settings(settings: dict[str, Any]) -> EvalConfig:
    settings = {**settings, "progress": settings.get("progress", False)}
    for name in ("data", "tasks"):
        if isinstance(settings.get(name), str):
            settings[name] = [settings[name]]
    return section_from_mapping(EvalConfig, settings, "eval")


def _merge_settings(settings: dict[str, Any]) -> Any:
    if "overwrite" in settings:
        raise ConfigError("merge.overwrite is decided by the build; leave it out", key="merge.overwrite")
    from elmtune.merging.options import MergeOptions

    return section_from_mapping(MergeOptions, settings, "merge")


def _export_settings(settings: dict[str, Any]) -> ExportSettings:
    return section_from_mapping(ExportSettings, settings, "export")


def _generate_settings(settings: dict[str, Any]) -> Any:
    from elmtune.build.generate_settings import generate_settings

    return generate_settings(settings)


SETTINGS: dict[str, Callable[..., Any]] = {
    "eval": _eval_settings,
    "merge": _merge_settings,
    "export": _export_settings,
    "generate": _generate_settings,
}


def _stage(data: Any, position: int, recipe_model: str, recipe_tokenizer: str | None) -> Stage:
    """One stage from its mapping; errors name the key (the caller adds the stage)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"stage {position + 1} must be a mapping with name and kind, got {data!r}", key="stages")
    name, kind = data.get("name"), data.get("kind")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"stage {position + 1}: name must be letters, digits, '-', '_' or '.', got {name!r}", key="name"
        )
    if kind not in OUTPUTS:
        raise ConfigError(f"stage '{name}': kind must be one of {', '.join(OUTPUTS)}, got {kind!r}", key="kind")
    inputs = {key: data[key] for key in INPUT_KEYS[kind] if key in data}
    for key, value in inputs.items():
        if not (value is None or (isinstance(value, str) and value)):
            raise ConfigError(f"{key} must be a path, a name or '@STAGE', got {value!r}", key=key)
    settings = {key: value for key, value in data.items() if key not in ("name", "kind", *inputs)}
    model = inputs.get("model") or recipe_model
    if kind in ("sft", "dpo"):
        built = _train_settings(kind, model, settings)
    else:
        built = SETTINGS[kind](settings)
    adapter = inputs.get("start_from") if kind in ("sft", "dpo") else inputs.get("adapter")
    if kind == "merge" and not adapter:
        raise ConfigError("adapter is required: '@STAGE' (an sft or dpo stage) or an adapter directory", key="adapter")
    tokenizer = inputs.get("tokenizer") or (recipe_tokenizer if "tokenizer" in INPUT_KEYS[kind] else None)
    return Stage(name=name, kind=kind, model=model, adapter=adapter, tokenizer=tokenizer, settings=built)


def _with_stage(err: ConfigError | UsageError, name: str, kind: str) -> ConfigError:
    key = getattr(err, "key", None)
    if key is not None and key.split(".")[0] in SETTINGS:  # the section of a stage's own settings: not a recipe key
        key = key.partition(".")[2]
    return ConfigError(f"stage '{name}' ({kind}): {err}", key=f"stages.{name}.{key}" if key else f"stages.{name}")


def parse_build_recipe(data: Mapping[str, Any], source: str | None = None) -> BuildRecipe:
    """Check a build recipe's mapping and build the :class:`BuildRecipe`.

    Args:
        data: The recipe's top-level mapping (``model``, optional ``tokenizer``, ``stages``).
        source: The recipe file, named at the start of every message.

    Returns:
        The recipe.

    Raises:
        ConfigError: Unknown top-level keys, a missing model, no stages, an unknown stage kind or key, an invalid
            setting, a duplicate stage name, or a reference to an unknown or later stage or to the wrong kind of
            output; one line naming the stage and the key.
    """
    prefix = f"{source}: " if source else ""
    try:
        return _parse(data, source)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}", key=err.key) from None


def _parse(data: Mapping[str, Any], source: str | None) -> BuildRecipe:
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ConfigError(f"unknown build recipe key(s) {names}; known: {', '.join(TOP_LEVEL_KEYS)}", key=unknown[0])
    model, tokenizer, stages = data.get("model"), data.get("tokenizer"), data.get("stages")
    if not isinstance(model, str) or not model:
        raise ConfigError("model is required: a preset, hub id or directory", key="model")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise ConfigError(f"tokenizer must be a directory or hub id, got {tokenizer!r}", key="tokenizer")
    if not isinstance(stages, list) or not stages:
        raise ConfigError("stages must be a non-empty list of stages (each with name and kind)", key="stages")
    parsed: list[Stage] = []
    for position, entry in enumerate(stages):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if name in {stage.name for stage in parsed}:
            raise ConfigError(f"stage '{name}', key name: duplicate stage name; names must be unique", key="name")
        try:
            parsed.append(_stage(entry, position, model, tokenizer))
        except (ConfigError, UsageError) as err:
            if name is None or not isinstance(entry, Mapping) or entry.get("kind") not in OUTPUTS:
                raise
            raise _with_stage(err, name, entry["kind"]) from None
    check_references(parsed, OUTPUTS)
    return BuildRecipe(model=model, stages=tuple(parsed), tokenizer=tokenizer, source=source)


def is_build_recipe(data: Mapping[str, Any]) -> bool:
    """A recipe mapping is a build recipe when it has a top-level ``stages`` key (a train recipe has none)."""
    return "stages" in data


def load_build_recipe(path: str | Path) -> BuildRecipe:
    """Read and check a build recipe file (see the module docstring).

    Raises:
        ConfigError: An unreadable file or an invalid recipe (see :func:`parse_build_recipe`).
    """
    located = locate_config(path)
    return parse_build_recipe(read_config_file(located, "build recipe"), source=str(located))


__all__ = [
    "INPUT_KEYS",
    "OUTPUTS",
    "BuildRecipe",
    "OutputKind",
    "Stage",
    "StageKind",
    "is_build_recipe",
    "load_build_recipe",
    "parse_build_recipe",
]

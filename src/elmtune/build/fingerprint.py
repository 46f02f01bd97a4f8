"""What a stage's result depends on, hashed; where its output lies, and whether that output is complete.

A stage's fingerprint is the SHA-256 of: its kind and settings (the config dataclass, defaults included), its inputs as
written in the recipe, the recipe's base model id, the content digests of the upstream outputs it uses (``@NAME``)
and of its local data files and adapter directories. Files shipped with elmtune are named ``elmtune:PATH``, not by
where the package is installed. The same fingerprint and a complete output whose digest is the
recorded one let a build skip the stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elmtune.build.recipe import Stage
from elmtune.build.references import referenced_stage
from elmtune.file_digest import data_fingerprint
from elmtune.shipped_files import portable_paths

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def stage_directory(build_dir: Path, position: int, stage: Stage) -> Path:
    """``DIR/NN-name``: where stage number ``position`` (from 0) writes."""
    return build_dir / f"{position + 1:02d}-{stage.name}"


def stage_output(directory: Path, stage: Stage) -> Path:
    """The stage's output in its directory: the run's ``final/``, the results or merged directory, the file."""
    if stage.kind in ("sft", "dpo"):
        return directory / "final"
    if stage.kind == "export":
        return directory / stage.settings.file_name
    if stage.kind == "generate":
        return directory / "replies.jsonl"
    return directory


def output_complete(stage: Stage, output: Path) -> bool:
    """Whether ``output`` holds everything the stage writes (a stage publishes its output whole, so this is cheap)."""
    kind = stage.output_kind
    if kind == "adapter":
        return all((output / name).is_file() for name in ADAPTER_FILES)
    if kind == "results":
        return (output / "results.json").is_file()
    if kind == "model":
        return (output / "config.json").is_file() and any(output.glob("*.safetensors"))
    return output.is_file() and output.stat().st_size > 0


def content_digest(path: str | Path) -> str | None:
    """SHA-256 of a local file, or of every file of a directory with its relative path; None when not local."""
    return data_fingerprint(str(path))


def _local_data(stage: Stage) -> list[str]:
    """The stage's data paths and its adapter directory when given as a path (not a reference)."""
    paths: list[str] = []
    if stage.kind in ("sft", "dpo"):
        paths.append(stage.settings.data.path)
    elif stage.kind == "eval":
        paths.extend(entry.partition("=")[2] or entry for entry in stage.settings.data)
    elif stage.kind == "generate" and stage.settings.input is not None:
        paths.append(stage.settings.input)
    if stage.adapter is not None and referenced_stage(stage.adapter) is None:
        paths.append(stage.adapter)
    return paths


def _result_settings(stage: Stage) -> dict[str, Any]:
    """The stage's settings that shape its result: a training stage's trackers (``train.report_to``) do not."""
    settings = stage.settings_dict()
    if stage.kind in ("sft", "dpo"):
        settings["train"] = {key: value for key, value in settings["train"].items() if key != "report_to"}
    return settings


def covered_values(stage: Stage, base_model: str, upstream: Mapping[str, str | None]) -> dict[str, Any]:
    """What the stage's fingerprint covers, as plain values.

    Args:
        stage: The stage.
        base_model: The recipe's base model id.
        upstream: Input key -> the content digest of the referenced stage's output.
    """
    covered = {
        "kind": stage.kind,
        "base_model": base_model,
        "inputs": stage.inputs(),
        "settings": _result_settings(stage),
        "upstream": dict(upstream),
        "data": {path: content_digest(path) for path in _local_data(stage)},
    }
    return portable_paths(covered)  # shipped samples by name: the same in every installation


def fingerprint_of(covered: Mapping[str, Any]) -> str:
    """SHA-256 of the covered values (canonical JSON)."""
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two covered mappings (``settings.train.lr``, ``data.x.json``)."""
    old, new = _flat(before, ""), _flat(after, "")
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


__all__ = [
    "changed_keys",
    "content_digest",
    "covered_values",
    "fingerprint_of",
    "output_complete",
    "stage_directory",
    "stage_output",
]

"""Arguments and options shared by several commands, as ``Annotated`` aliases, and how flags meet ``--config`` files.

Every command that takes ``--config FILE.yaml`` layers its settings the same way: the dataclass defaults, then the
file, then the flags given on the command line. :func:`given_flags` tells which flags were given, and
:func:`name_flag` rewrites a :class:`~elmtune.errors.ConfigError` about a key so that it also names the flag.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from elmtune.errors import ConfigError

ModelArg = Annotated[
    str,
    typer.Argument(
        help="A preset (270M, 450M, 1_1B, 3B, tiny), a hub id (apple/OpenELM-270M-Instruct) or a local directory.",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file of settings (see docs); flags given on the command line override it.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="The file or directory to create (absent or empty; see --overwrite).", show_default=False
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace an existing output; it is replaced only once the new one is complete."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto, cpu, cuda, cuda:1 or mps (train, eval: default the best available; merge: cpu).",
        show_default=False,
    ),
]

ProgressOpt = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress",
        help="Report progress on stderr: a bar on a terminal, otherwise a line every 10% or 10 s.",
    ),
]


def given_flags(ctx: typer.Context) -> dict[str, Any]:
    """The parameters of the running command that were set on the command line (or by environment), by name.

    Args:
        ctx: The command's click context (a ``typer.Context`` parameter).

    Returns:
        Parameter name -> value, for the parameters that did not keep their default.
    """
    given = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            given[name] = value
    return given


def flag_names(ctx: typer.Context) -> dict[str, str]:
    """Parameter name -> its long flag (``data_format`` -> ``--format``) for the options of the running command."""
    names = {}
    for param in ctx.command.params:
        long_flags = [opt for opt in param.opts if opt.startswith("--")]
        if param.name is not None and long_flags:
            names[param.name] = max(long_flags, key=len)
    return names


def config_keys(
    kind: type, parameters: Iterable[str], renamed: Mapping[str, str], command_options: Collection[str]
) -> dict[str, str]:
    """The dotted key that each config parameter of a command sets in the dataclass ``kind``.

    A parameter sets the field of the same name (fields of nested dataclasses included: ``num_beams`` ->
    ``generation.num_beams``), unless ``renamed`` says otherwise.

    Args:
        kind: The config dataclass the command builds.
        parameters: The command's parameter names.
        renamed: Parameter -> dotted key, for parameters named otherwise than their field or whose field name
            several nested sections share.
        command_options: Parameters of the command itself, which set no field.

    Returns:
        Parameter name -> dotted key, for every parameter outside ``command_options``.

    Raises:
        ValueError: A parameter names no field, or a field of several sections, and is not in ``renamed``.
    """
    owners = _keys_by_field(kind, "")
    keys = {}
    for name in parameters:
        if name in command_options:
            continue
        candidates = [renamed[name]] if name in renamed else owners.get(name, [])
        if len(candidates) != 1:
            raise ValueError(f"parameter {name!r} sets {candidates or 'no field'}; name its key in the renamed table")
        keys[name] = candidates[0]
    return keys


def _keys_by_field(kind: type, prefix: str) -> dict[str, list[str]]:
    """Field name -> the dotted keys of every field of that name in ``kind`` and its nested dataclasses."""
    hints = typing.get_type_hints(kind)
    owners: dict[str, list[str]] = {}
    for spec in dataclasses.fields(kind):
        key = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(hints[spec.name]):
            for name, keys in _keys_by_field(hints[spec.name], f"{key}.").items():
                owners.setdefault(name, []).extend(keys)
        else:
            owners.setdefault(spec.name, []).append(key)
    return owners


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"generation.num_beams": 4}`` -> ``{"generation": {"num_beams": 4}}``."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *sections, name = key.split(".")
        inner = nested
        for section in sections:
            inner = inner.setdefault(section, {})
        inner[name] = value
    return nested


def merge_settings(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top, nested mappings merged key by key (a config file under flags)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def name_flag(err: ConfigError, flag_by_key: Mapping[str, str]) -> ConfigError:
    """``err`` with the flag that sets its key appended (``train.lr must be ... (flag --lr)``), when there is one."""
    flag = flag_by_key.get(err.key or "")
    if flag is None:
        return err
    return ConfigError(f"{err} (flag {flag})", key=err.key)


__all__ = [
    "ConfigOpt",
    "DeviceOpt",
    "ModelArg",
    "OutputOpt",
    "OverwriteOpt",
    "ProgressOpt",
    "config_keys",
    "flag_names",
    "given_flags",
    "merge_settings",
    "name_flag",
    "nest",
]

"""Settings mappings (parsed YAML, flags) to frozen config dataclasses and back, with one error style.

Every config section (``TrainConfig``, ``AdapterConfig``, ``DataConfig``, ``EvalConfig``...) is built by
:func:`section_from_mapping`: unknown keys are an error that lists the known ones, values are checked against the
field types (an int is accepted where a float is expected, a list where a tuple is), and nested dataclass fields take
nested mappings. Value checks stay in each dataclass's ``__post_init__``, which reports the first failed check through
:func:`require`. Every error is a :class:`~elmtune.errors.ConfigError` whose message names the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

from elmtune.errors import ConfigError

Section = TypeVar("Section")


def require(section: str, checks: Iterable[tuple[bool, str, str]]) -> None:
    """Raise for the first failed value check of a config section.

    Args:
        section: The section's dotted name (``train``, ``adapter``, ``data``).
        checks: ``(ok, field, message)`` triples; the error reads ``"{section}.{field} {message}"``.

    Raises:
        ConfigError: The first check whose ``ok`` is false, with ``key`` set to ``"{section}.{field}"``.
    """
    for ok, name, message in checks:
        if not ok:
            raise ConfigError(f"{section}.{name} {message}", key=f"{section}.{name}")


def coerce_value(value: Any, annotation: Any, key: str) -> Any:
    """Check a YAML or flag value against a field's type.

    Ints become floats where a float is expected and lists become tuples; ``Literal`` choices are left to the
    dataclass's own checks.

    Args:
        value: The value as parsed.
        annotation: The field's resolved type.
        key: The dotted key, for messages.

    Returns:
        The value, converted where the type allows.

    Raises:
        ConfigError: The value has the wrong type.
    """
    origin = typing.get_origin(annotation)
    allowed = set(typing.get_args(annotation)) if origin in (types.UnionType, typing.Union) else {annotation}
    if value is None:
        if type(None) not in allowed:
            raise ConfigError(f"{key} cannot be null; give a value or leave the key out", key=key)
        return None
    if isinstance(value, bool):
        if bool in allowed or any(typing.get_origin(a) is Literal for a in allowed):
            return value
        raise ConfigError(f"{key} must not be true/false, got {value!r}", key=key)
    if isinstance(value, int) and int not in allowed and float in allowed:
        return float(value)
    if isinstance(value, list) and any(typing.get_origin(a) is tuple for a in allowed):
        return tuple(value)
    simple = {a for a in allowed if a in (int, float, str)}
    if simple and not isinstance(value, tuple(simple)) and not any(typing.get_origin(a) for a in allowed):
        names = " or ".join(sorted(a.__name__ for a in simple))
        raise ConfigError(f"{key} must be {names}, got {value!r}", key=key)
    if bool in allowed and len(allowed - {type(None)}) == 1:
        raise ConfigError(f"{key} must be true or false, got {value!r}", key=key)
    return value


def section_from_mapping(cls: type[Section], data: Mapping[str, Any], section: str) -> Section:
    """Build the frozen dataclass ``cls`` from ``data``.

    Args:
        cls: The config dataclass.
        data: Its settings by field name; a nested dataclass field may be given as a mapping.
        section: The dotted name of the section, for messages (``train``, ``eval.generation``).

    Returns:
        The validated instance.

    Raises:
        ConfigError: ``data`` is not a mapping, has unknown keys, misses a required key, or holds an invalid value.
            A ``ValueError`` of the dataclass becomes a ConfigError whose key is the one field its message names.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section} must be a mapping of settings, got {type(data).__name__}", key=section)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ConfigError(f"unknown {section} key(s) {names}; known: {', '.join(known)}", key=f"{section}.{unknown[0]}")
    for name, spec in known.items():
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if required and spec.init and name not in data:
            raise ConfigError(f"{section}.{name} is required", key=f"{section}.{name}")
    annotations = typing.get_type_hints(cls)
    values = {name: _field_value(value, annotations[name], f"{section}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        named = [name for name in known if re.search(rf"\b{name}\b", str(err))]
        key = f"{section}.{named[0]}" if len(named) == 1 else section
        raise ConfigError(f"{section}: {err}", key=key) from None


def _field_value(value: Any, annotation: Any, key: str) -> Any:
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return section_from_mapping(annotation, value, key)
    return coerce_value(value, annotation, key)


def section_to_dict(section: Any) -> dict[str, Any]:
    """Plain YAML/JSON-ready values of a config dataclass: lists for tuples, mappings for nested dataclasses.

    ``section_from_mapping(type(s), section_to_dict(s), name)`` gives an equal instance.
    """
    return _plain(dataclasses.asdict(section))


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


__all__ = ["coerce_value", "require", "section_from_mapping", "section_to_dict"]

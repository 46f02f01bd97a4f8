"""References between build stages: ``"@NAME"`` in a stage's ``model``, ``adapter`` or ``start_from`` key.

``adapter: "@sft"`` (``start_from: "@sft"`` in a dpo stage) is the adapter an ``sft`` or ``dpo`` stage named ``sft``
trained (its run's ``final/``); ``model: "@merge"`` is the directory a ``merge`` stage wrote. A stage may use only
the outputs of the stages before it, and each key takes one kind of output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from elmtune.errors import ConfigError

REFERENCE_PREFIX = "@"

ACCEPTS: dict[str, str] = {"model": "model", "tokenizer": "model", "adapter": "adapter", "start_from": "adapter"}
"""Input key -> the kind of stage output it takes."""

DESCRIBED: dict[str, str] = {
    "adapter": "an adapter (the output of an sft or dpo stage)",
    "model": "a model directory (the output of a merge stage)",
    "results": "evaluation results",
    "gguf": "a GGUF file",
    "replies": "generated replies",
}


def referenced_stage(value: str | None) -> str | None:
    """The stage ``value`` refers to (``"@sft"`` -> ``"sft"``), or None for a plain path or name."""
    if isinstance(value, str) and value.startswith(REFERENCE_PREFIX):
        return value[len(REFERENCE_PREFIX) :]
    return None


def references_of(inputs: Mapping[str, str]) -> dict[str, str]:
    """Input key -> referenced stage name, for the inputs that are references."""
    found = {key: referenced_stage(value) for key, value in inputs.items()}
    return {key: name for key, name in found.items() if name is not None}


def check_references(stages: Sequence[Any], outputs: Mapping[str, str]) -> None:
    """Check that every reference names an earlier stage whose output fits the key.

    Args:
        stages: The recipe's stages, in order (each with ``name``, ``kind`` and ``references()``).
        outputs: Stage kind -> the kind of output it yields.

    Raises:
        ConfigError: A reference to an unknown stage, to the stage itself or a later one, or to an output of the
            wrong kind (an export of an adapter); the message names the stage and the key.
    """
    for position, stage in enumerate(stages):
        earlier = {other.name: other for other in stages[:position]}
        for key, target in stage.references().items():
            where = f"stage '{stage.name}' ({stage.kind}), key {key}"
            if target not in earlier:
                later = any(other.name == target for other in stages[position:])
                problem = (
                    "refers to this or a later stage; a stage can use only the outputs of the stages before it"
                    if later
                    else f"names no stage; the stages before it are {', '.join(earlier) or '(none)'}"
                )
                raise ConfigError(f"{where}: '@{target}' {problem}", key=f"stages.{stage.name}.{key}")
            produced, wanted = outputs[earlier[target].kind], ACCEPTS[key]
            if produced != wanted:
                raise ConfigError(
                    f"{where}: '@{target}' is {DESCRIBED[produced]}, but {key} takes {DESCRIBED[wanted]}",
                    key=f"stages.{stage.name}.{key}",
                )


__all__ = ["ACCEPTS", "REFERENCE_PREFIX", "check_references", "referenced_stage", "references_of"]

"""The ``generate`` stage: sample replies of the built model to a few prompts, as ``elmtune generate --input`` does.

Settings (no torch to read them)::

    - name: samples
      kind: generate
      model: "@merge"                 # or the base with adapter: "@dpo"
      prompts: ["What is a cloud?"]   # or input: prompts.jsonl (rows with prompt or messages)
      system: null
      generation: {max_new_tokens: 64}  # elmtune.inference.settings.DecodingSettings

The stage writes ``prompts.jsonl`` (for ``prompts``) and ``replies.jsonl`` (each input row with ``reply``) in its
directory, through :func:`elmtune.inference.run_generate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elmtune.config_mapping import require, section_from_mapping
from elmtune.inference.settings import DecodingSettings

if TYPE_CHECKING:
    from elmtune.build.plan import StagePlan
    from elmtune.build.recipe import Stage


@dataclass(frozen=True)
class GenerateSettings:
    """What a ``generate`` stage asks of the model.

    Attributes:
        prompts: Prompts (user turns, or whole texts with ``raw``); or give ``input``.
        input: A JSONL file of prompt rows (``prompt`` or ``messages``), as ``elmtune generate --input`` reads.
        system: A system turn put before every prompt (chat format only).
        raw: Feed the prompts as they are, without the chat format.
        batch_size: Prompts generated together (left-padded).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` or ``mps``.
        dtype: Weight dtype (``fp32``, ``bf16``, ``fp16``); None keeps the checkpoint's.
        generation: Decoding: greedy by default; temperature, top-p, top-k, repetition penalty, seed, max new tokens.
    """

    prompts: tuple[str, ...] = ()
    input: str | None = None
    system: str | None = None
    raw: bool = False
    batch_size: int = 8
    device: str = "auto"
    dtype: str | None = None
    generation: DecodingSettings = field(default_factory=DecodingSettings)

    def __post_init__(self) -> None:
        require(
            "generate",
            [
                (bool(self.prompts) != (self.input is not None), "prompts", "or input: give exactly one of them"),
                (all(isinstance(p, str) and p for p in self.prompts), "prompts", "must be non-empty strings"),
                (self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}"),
            ],
        )


def generate_settings(settings: Mapping[str, Any]) -> GenerateSettings:
    """The stage's settings from its recipe keys (the ones besides name, kind, model, adapter and tokenizer).

    Raises:
        ConfigError: An unknown key or an invalid value, naming the key.
    """
    return section_from_mapping(GenerateSettings, settings, "generate")


def run_generate_stage(stage: Stage, plan: StagePlan, resolve: Callable[[str | None], str | None]) -> str:
    """Generate the replies of a ``generate`` stage into its directory; returns the first reply as a summary."""
    from elmtune.inference import GenerationRequest, ModelSource, run_generate

    settings: GenerateSettings = stage.settings
    prompts = Path(settings.input) if settings.input is not None else plan.directory / "prompts.jsonl"
    if settings.input is None:
        prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in settings.prompts), encoding="utf-8")
    adapter = resolve(stage.adapter)
    source = ModelSource(
        str(resolve(stage.model)),
        adapter=None if adapter is None else Path(adapter),
        tokenizer=resolve(stage.tokenizer),
        device=settings.device,
        dtype=settings.dtype,
    )
    request = GenerationRequest(
        source,
        decoding=settings.generation,
        system=settings.system,
        raw=settings.raw,
        input=prompts,
        output=plan.output,
        overwrite=True,
        batch_size=settings.batch_size,
    )
    result = run_generate(request)
    first = result.replies[0].text.strip().replace("\n", " ") if result.replies else ""
    return f"{len(result.replies)} replies; the first: {first[:100]!r}"


__all__ = ["GenerateSettings", "generate_settings", "run_generate_stage"]

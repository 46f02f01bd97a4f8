"""What ``elmtune generate`` and ``elmtune chat`` are asked to do, as frozen dataclasses checked once (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from elmtune.errors import UsageError
from elmtune.inference.settings import DecodingSettings


@dataclass(frozen=True)
class ModelSource:
    """The model that replies.

    Attributes:
        model: A preset (``270M``, ``tiny``...), a hub id, or a local directory (a base, a merged checkpoint, or any
            transformers causal LM).
        adapter: A peft adapter directory applied on top of ``model``.
        tokenizer: Tokenizer directory or hub id; default: the model directory's own, else the bundled Llama-2 one.
        device: ``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:1`` or ``mps``.
        dtype: Weight dtype (``fp32``, ``bf16``, ``fp16``); None keeps the checkpoint's.
    """

    model: str
    adapter: Path | None = None
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One ``elmtune generate`` run: a single prompt, or a JSONL file of prompts.

    Attributes:
        source: The model.
        decoding: How replies are decoded.
        prompt: The prompt of a single-prompt run (a user turn, or the whole text with ``raw``).
        system: A system turn put before every prompt (chat format only).
        raw: Feed the prompt text as it is, without the chat format.
        input: The JSONL file of prompts of a batch run.
        output: The JSONL file of replies of a batch run.
        overwrite: Replace an existing ``output``.
        batch_size: Prompts generated together in a batch run (left-padded).
    """

    source: ModelSource
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    prompt: str | None = None
    system: str | None = None
    raw: bool = False
    input: Path | None = None
    output: Path | None = None
    overwrite: bool = False
    batch_size: int = 8

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.input is None):
            raise UsageError("give either --prompt TEXT or --input prompts.jsonl (with --output replies.jsonl)")
        if (self.input is None) != (self.output is None):
            raise UsageError("--input and --output go together: prompts in, replies out")
        if self.raw and self.system is not None:
            raise UsageError("--system needs the chat format; leave out --raw")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {self.batch_size}")

    @property
    def is_batch(self) -> bool:
        """Whether this run reads prompts from a file."""
        return self.input is not None


__all__ = ["GenerationRequest", "ModelSource"]

"""``EvalConfig``: every setting of an evaluation run, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from elmtune.errors import UsageError
from elmtune.evaluation.batching import BatchSize
from elmtune.evaluation.commonsense import APPLE_SEED
from elmtune.evaluation.generation import GenerationSettings
from elmtune.evaluation.mc import MCFormat
from elmtune.evaluation.scoring import Layout

Protocol = Literal["apple", "llm-adapters", "lm-eval", "mc"]
Backend = Literal["elmtune", "lm-eval"]

PROTOCOLS: tuple[str, ...] = ("apple", "llm-adapters", "lm-eval", "mc")


class EvalConfigError(UsageError):
    """Conflicting or invalid evaluation settings."""


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run.

    Attributes:
        protocol: ``apple`` (LLM-Adapters prompt, log-likelihood), ``llm-adapters`` (generation + regex), ``lm-eval``
            (lm-eval's zero-shot prompts), or ``mc`` (generic local multiple-choice files).
        data: Files or directories with the task data (``TASK=FILE`` names a file's task). Required for ``apple``,
            ``llm-adapters`` and ``mc``; for ``lm-eval`` without data the Hugging Face datasets are read; with the
            ``lm-eval`` backend, directories of lm-eval task YAMLs.
        tasks: Task names; None runs every task found in ``data`` (all built-in tasks for ``lm-eval`` without data).
        limit: Questions per task. ``apple`` and ``llm-adapters`` take Apple's seeded shuffle first; the others take
            the first rows, as lm-eval does.
        batch_size: Rows per forward pass, or ``"auto"``.
        add_bos: Prepend BOS (True: Apple's setting); False: never; None: the tokenizer's default.
        dtype: Weight dtype (``fp32``, ``bf16``, ``fp16``); None keeps the checkpoint's.
        device: ``cpu``, ``cuda``, ``mps``...; None picks the best available.
        layout: Scorer layout: ``auto``, ``shared`` (shared prefix) or ``full`` (one row per choice).
        generation: Beams and new tokens of the ``llm-adapters`` protocol.
        mc_format: Prompt template and target delimiter of the ``mc`` protocol.
        backend: ``elmtune`` (built-in fast scorer) or ``lm-eval`` (lm-eval's own evaluator on this model, any task).
        seed: Seed of Apple's shuffle before ``limit``.
        progress: Show progress bars (on a terminal only).
    """

    protocol: Protocol = "apple"
    data: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None
    limit: int | None = None
    batch_size: BatchSize = "auto"
    add_bos: bool | None = True
    dtype: str | None = None
    device: str | None = None
    layout: Layout = "auto"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    mc_format: MCFormat = field(default_factory=MCFormat)
    backend: Backend = "elmtune"
    seed: int = APPLE_SEED
    progress: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvalConfigError(f"unknown protocol '{self.protocol}'; use one of {', '.join(PROTOCOLS)}")
        if self.backend not in ("elmtune", "lm-eval"):
            raise EvalConfigError(f"unknown backend '{self.backend}'; use elmtune or lm-eval")
        if self.limit is not None and self.limit < 1:
            raise EvalConfigError(f"--limit must be at least 1, not {self.limit}")
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise EvalConfigError(f"--batch-size must be a positive integer or 'auto', not {self.batch_size!r}")
        if self.layout not in ("auto", "shared", "full"):
            raise EvalConfigError(f"unknown layout '{self.layout}'; use auto, shared or full")
        if self.backend == "lm-eval" and not self.tasks:
            raise EvalConfigError("--backend lm-eval needs --tasks (lm-eval task names)")
        if self.backend == "elmtune" and self.protocol in ("apple", "llm-adapters", "mc") and not self.data:
            raise EvalConfigError(
                f"--protocol {self.protocol} needs --data: a directory with <task>/test.json files or data files"
            )
        if self.tasks is not None and not self.tasks:
            raise EvalConfigError("--tasks is empty")

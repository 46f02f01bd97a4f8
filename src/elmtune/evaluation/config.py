"""``EvalConfig``: every setting of an evaluation run, validated on construction, and the small value types it holds.

This module imports neither torch nor transformers, so reading and checking a configuration stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from elmtune.config_mapping import require
from elmtune.datasets.formats import PREFERENCE_FORMATS
from elmtune.datasets.templates import TEMPLATES
from elmtune.errors import UsageError
from elmtune.evaluation.data import DataError

Protocol = Literal["apple", "llm-adapters", "lm-eval", "mc", "preference"]
Backend = Literal["elmtune", "lm-eval"]
Layout = Literal["auto", "shared", "full"]
"""Scorer row layout: shared prefix, one full row per choice (as lm-eval), or decided per model."""
BatchSize = int | Literal["auto"]
"""Rows per forward pass, or ``"auto"`` (a token budget that halves on out-of-memory)."""

PROTOCOLS: tuple[str, ...] = ("apple", "llm-adapters", "lm-eval", "mc", "preference")

APPLE_SEED = 83652
"""Seed of the shuffle Apple applies before ``limit`` (Python's ``random.seed`` + ``random.shuffle``)."""


class EvalConfigError(UsageError):
    """Conflicting or invalid evaluation settings."""


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of the generation protocol.

    Attributes:
        num_beams: 1 for greedy decoding (default), 4 for LLM-Adapters' beam search.
        max_new_tokens: Tokens generated per question (LLM-Adapters: 32).
    """

    num_beams: int = 1
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, not {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")


@dataclass(frozen=True)
class PreferenceSettings:
    """Settings of the preference protocol: the implicit-reward temperature and how pairs are read and tokenised.

    The data settings default to a DPO run's (``DataConfig``'s): pass the ones the run was trained with.

    Attributes:
        beta: Temperature of the implicit reward ``beta * (log pi_tuned(y|x) - log pi_base(y|x))`` (TRL's default).
        data_format: ``auto`` or a preference format: ``preference`` (H4/argilla/TRL layouts),
            ``sharegpt_preference``, ``alpaca_preference`` (LLaMA-Factory) or ``ultrafeedback_raw``.
        split: Split of a dataset directory or hub dataset (``test_prefs`` for UltraFeedback binarized).
        data_template: Training template of the pairs: ``auto``, ``chat``, ``alpaca`` or ``plain``.
        max_length: Longest sequence in tokens (prompt + reply, BOS and EOS included).
        max_prompt_length: Longest prompt once a pair must be shortened.
        skip_invalid: Skip and count malformed rows instead of stopping at the first.
    """

    beta: float = 0.1
    data_format: str = "auto"
    split: str = "train"
    data_template: str = "auto"
    max_length: int = 2048
    max_prompt_length: int = 512
    skip_invalid: bool = False

    def __post_init__(self) -> None:
        section = "eval.preference"
        require(
            section,
            [
                (self.beta > 0, "beta", f"must be positive, got {self.beta}"),
                (
                    self.data_format in ("auto", *PREFERENCE_FORMATS),
                    "data_format",
                    f"must be auto or one of {', '.join(PREFERENCE_FORMATS)}, got {self.data_format!r}",
                ),
                (
                    self.data_template in TEMPLATES,
                    "data_template",
                    f"must be one of {', '.join(TEMPLATES)}, got {self.data_template!r}",
                ),
                (self.max_length >= 2, "max_length", f"must be at least 2, got {self.max_length}"),
                (
                    1 <= self.max_prompt_length < self.max_length,
                    "max_prompt_length",
                    f"must be at least 1 and below max_length ({self.max_length}), got {self.max_prompt_length}",
                ),
            ],
        )


def template_environment() -> Any:
    """The Jinja environment of multiple-choice prompt templates: missing fields are errors, trailing newlines kept."""
    from jinja2 import BaseLoader, Environment, StrictUndefined

    return Environment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)


@dataclass(frozen=True)
class MCFormat:
    """How a generic multiple-choice file is turned into requests.

    Attributes:
        template: Jinja template of the context, rendered with the row's fields; None uses ``query`` or ``context``.
        target_delimiter: Text between context and each choice (lm-eval's default: one space).
    """

    template: str | None = None
    target_delimiter: str = " "

    def __post_init__(self) -> None:
        if self.template is not None:
            from jinja2 import TemplateSyntaxError

            try:
                template_environment().from_string(self.template)
            except TemplateSyntaxError as error:
                raise DataError(f"prompt template does not parse: {error}") from None


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run.

    Attributes:
        protocol: ``apple`` (LLM-Adapters prompt, log-likelihood), ``llm-adapters`` (generation + regex), ``lm-eval``
            (lm-eval's zero-shot prompts), ``mc`` (generic local multiple-choice files), or ``preference`` (held-out
            preference pairs: implicit rewards of base + adapter against the base).
        data: Files or directories with the task data (``TASK=FILE`` names a file's task). Required for ``apple``,
            ``llm-adapters``, ``mc`` and ``preference`` (files, dataset directories or hub ids of pairs); for
            ``lm-eval`` without data the Hugging Face datasets are read; with the ``lm-eval`` backend, directories of
            lm-eval task YAMLs.
        tasks: Task names; None runs every task found in ``data`` (all built-in tasks for ``lm-eval`` without data).
        limit: Questions per task. ``apple`` and ``llm-adapters`` take Apple's seeded shuffle first; the others take
            the first rows, as lm-eval does (``preference``: the first usable pairs).
        batch_size: Rows per forward pass (``preference``: pairs, two rows each), or ``"auto"``.
        add_bos: Prepend BOS (True: Apple's setting); False: never; None: the tokenizer's default. ``preference``
            always does, as training does.
        dtype: Weight dtype (``fp32``, ``bf16``, ``fp16``); None keeps the checkpoint's.
        device: ``cpu``, ``cuda``, ``mps``...; None picks the best available.
        layout: Scorer layout: ``auto``, ``shared`` (shared prefix) or ``full`` (one row per choice).
        generation: Beams and new tokens of the ``llm-adapters`` protocol.
        mc_format: Prompt template and target delimiter of the ``mc`` protocol.
        preference: Beta, data format and tokenisation of the ``preference`` protocol.
        backend: ``elmtune`` (built-in fast scorer) or ``lm-eval`` (lm-eval's own evaluator on this model, any task).
        seed: Seed of Apple's shuffle before ``limit``.
        progress: Show progress: a bar on a terminal, periodic lines on stderr otherwise.
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
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
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
        if self.backend == "lm-eval" and self.protocol == "preference":
            raise EvalConfigError("--protocol preference runs on the elmtune backend; leave out --backend lm-eval")
        if self.protocol == "preference" and self.add_bos is not True:
            raise EvalConfigError(
                "--protocol preference tokenises pairs as a DPO run does, BOS first; drop --no-add-bos"
            )
        if self.protocol == "preference" and not self.data:
            raise EvalConfigError("--protocol preference needs --data: files, dataset directories or hub ids of pairs")
        if self.backend == "elmtune" and self.protocol in ("apple", "llm-adapters", "mc") and not self.data:
            raise EvalConfigError(
                f"--protocol {self.protocol} needs --data: a directory with <task>/test.json files or data files"
            )
        if self.tasks is not None and not self.tasks:
            raise EvalConfigError("--tasks is empty")

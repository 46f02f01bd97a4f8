"""The settings every side of a run shares, passed to each worker process as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
ROOT = BENCHMARKS.parent


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures: the model shape, the step shape, the adapter and the repetition counts.

    The defaults are the issue's reference setting: the 270M shape with random weights, fp32, batch 4 x 256, Apple's
    recipe targets, r 32. The real-data groups train on ``examples`` rows at micro-batch ``real_batch`` times
    ``real_accum`` (Apple's global batch 16), max length ``real_max_length``. ``quick()`` swaps in the tiny preset and
    small shapes.
    """

    preset: str = "270M"
    batch: int = 4
    seq: int = 256
    r: int = 32
    targets: str = "apple"
    dropout: float = 0.0
    dora_dropout: float = 0.1
    steps: int = 2
    warmup: int = 1
    threads: int = 0
    clock: str = "wall"
    new_tokens: int = 128
    prompt_tokens: int = 32
    generate_batch: int = 16
    eval_tasks: str = "arc_easy,arc_challenge,hellaswag,openbookqa"
    eval_limit: int = 30
    lm_eval_batch: int = 8
    merge_dtype: str = "bf16"
    examples: int = 2000
    real_batch: int = 8
    real_accum: int = 2
    real_max_length: int = 256
    apple_code: str = ""
    apple_python: str = ""
    workdir: str = ""
    is_quick: bool = False

    def to_json(self) -> str:
        """The settings as one JSON string (a worker's command-line argument)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        """Settings back from :meth:`to_json`."""
        return cls(**json.loads(text))

    def quick(self) -> Settings:
        """The tiny preset and small shapes: every side runs in seconds."""
        return replace(
            self,
            preset="tiny",
            batch=2,
            seq=32,
            r=4,
            steps=1,
            warmup=1,
            threads=1,
            new_tokens=8,
            prompt_tokens=8,
            generate_batch=4,
            eval_tasks="arc_easy",
            eval_limit=4,
            merge_dtype="f32",
            examples=8,
            real_batch=2,
            real_accum=2,
            is_quick=True,
        )

    def describe(self) -> str:
        """One line for the report: the shape and adapter settings that every row shares."""
        threads = self.threads or "all"
        return (
            f"preset {self.preset} (random weights), fp32, batch {self.batch} x {self.seq}, targets {self.targets}, "
            f"r {self.r}, {threads} threads, {self.clock} clock; real data: {self.examples} examples, batch "
            f"{self.real_batch} x {self.real_accum} accumulation, max length {self.real_max_length}"
        )

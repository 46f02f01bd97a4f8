"""The merge report: what a merge did, as one typed record.

The CLI prints it, the model card is rendered from it, and ``merge_report.json`` stores it
(:meth:`MergeReport.to_dict`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmtune import __version__
from elmtune.merging.verify import VerifyResult

REPORT_FORMAT = "elmtune-merge-report"
REPORT_FILE = "merge_report.json"


@dataclass(frozen=True)
class MergedAdapter:
    """The adapter that was merged.

    Attributes:
        path: Its directory.
        method: ``lora`` or ``dora``.
        trained_on: The base it was trained on, as recorded in its metadata (None for plain peft).
        config: The elmtune adapter settings it was trained with (None for plain peft).
        peft: The peft settings ``r``, ``lora_alpha``, ``target_modules``, ``use_rslora``, ``use_dora``.
    """

    path: str
    method: str
    trained_on: str | None
    config: Mapping[str, Any] | None
    peft: Mapping[str, Any]


@dataclass(frozen=True)
class HeadHandling:
    """What happened to the output head, which OpenELM ties to the token embedding.

    Attributes:
        adapted: Whether the adapter changes the token embedding.
        tied: Whether the merged head is tied to the (merged) embedding.
        untied_by_request: Whether ``--untie-embeddings`` wrote a separate head.
        note: One sentence for people.
    """

    adapted: bool
    tied: bool
    untied_by_request: bool
    note: str

    @classmethod
    def decide(cls, adapted: bool, base_tied: bool, untie: bool) -> HeadHandling:
        """The head of a merge: ``untie`` applies to a tied base only."""
        untie = untie and base_tied
        return cls(adapted, base_tied and not untie, untie, _head_note(adapted, base_tied, untie))


def _head_note(adapted: bool, base_tied: bool, untie: bool) -> str:
    if not base_tied:
        return "a separate lm_head, as in the base"
    if untie and adapted:
        return (
            "untied (--untie-embeddings): lm_head.weight is the base embedding, so the model equals the unmerged "
            "adapter; the token embedding carries the adapter"
        )
    if untie:
        return "untied (--untie-embeddings): lm_head.weight is a copy of the base embedding"
    if adapted:
        return (
            "tied: the adapted token embedding is also the output head, whereas the unmerged adapter's head is the "
            "base embedding; checked against an unmerged reference whose head is the adapted embedding"
        )
    return "tied to the token embedding, as in the base"


@dataclass(frozen=True)
class MergeTimings:
    """Wall-clock seconds (rounded to milliseconds).

    Attributes:
        merge: Reading, merging and writing the tensors, config and tokenizer.
        total: Everything, the check included.
    """

    merge: float
    total: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge", round(self.merge, 3))
        object.__setattr__(self, "total", round(self.total, 3))


@dataclass(frozen=True)
class MergeReport:
    """What a merge wrote and how (the content of ``merge_report.json``).

    Attributes:
        output: The merged checkpoint directory.
        base: The base as given (preset, hub id or directory).
        base_dtype: The base's dtype (``float32``, ``bfloat16``...).
        adapter: The merged adapter.
        training_data: The ``data`` section of the run that trained the adapter, when found next to it.
        dtype: The output dtype.
        head: What happened to the output head.
        low_memory: Whether the base was read tensor by tensor from its files.
        changed_tensors: Base keys the merge changed (sorted).
        files: Files of the checkpoint directory (sorted).
        verification: The merge check (None when skipped).
        seconds: How long it took.
        elmtune_version: The elmtune that merged.
        model_type: The base's transformers ``model_type`` (``openelm``, ``llama``, ``gpt2``...).
        base_quantization: ``nf4``/``int8`` when the adapter was trained on a quantised base: its Linear weights
            were merged as ``dequant(quant(W)) + update`` (the weights the training computed with), else None.
    """

    output: str
    base: str
    base_dtype: str
    adapter: MergedAdapter
    training_data: Mapping[str, Any] | None
    dtype: str
    head: HeadHandling
    low_memory: bool
    changed_tensors: tuple[str, ...]
    files: tuple[str, ...]
    verification: VerifyResult | None
    seconds: MergeTimings
    elmtune_version: str = field(default=__version__)
    model_type: str = "openelm"
    base_quantization: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of ``merge_report.json``."""
        adapter = self.adapter
        return {
            "format": REPORT_FORMAT,
            "version": 1,
            "elmtune_version": self.elmtune_version,
            "output": self.output,
            "base": self.base,
            "base_dtype": self.base_dtype,
            "model_type": self.model_type,
            "adapter": {
                "path": adapter.path,
                "method": adapter.method,
                "trained_on": adapter.trained_on,
                "config": None if adapter.config is None else dict(adapter.config),
                "peft": dict(adapter.peft),
            },
            "training_data": None if self.training_data is None else dict(self.training_data),
            "dtype": self.dtype,
            "arithmetic": "fp32, rounded once to the output dtype",
            "base_quantization": self.base_quantization,
            "embeddings": {
                "adapted": self.head.adapted,
                "tied": self.head.tied,
                "untied_by_request": self.head.untied_by_request,
                "note": self.head.note,
            },
            "low_memory": self.low_memory,
            "changed_tensors": list(self.changed_tensors),
            "files": list(self.files),
            "verification": None if self.verification is None else self.verification.to_dict(),
            "seconds": {"merge": self.seconds.merge, "total": self.seconds.total},
        }

    def write(self, out_dir: Path) -> None:
        """Write ``merge_report.json`` into ``out_dir``."""
        (out_dir / REPORT_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


__all__ = ["REPORT_FILE", "REPORT_FORMAT", "HeadHandling", "MergeReport", "MergeTimings", "MergedAdapter"]

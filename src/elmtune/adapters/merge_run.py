"""``merge_to_directory``: base + adapter -> a verified, self-describing OpenELM checkpoint directory.

Steps: check the output path; read the adapter and check it fits the base (geometry fingerprint, and every adapted
module present in the base with the update's shape); open the base, either loaded in memory
(any preset, hub id or directory) or, with ``low_memory``, as its safetensors files read one tensor at a time; merge
tensor by tensor in fp32 and round once to the output dtype (:mod:`elmtune.adapters.streaming`), writing straight
into a staged directory; write config, tokenizer, report and model card; run the merge check
(:func:`elmtune.adapters.verify.verify_merge`); rename the staged directory into place only if the check passed.

The output head: when the adapter touches ``token_embeddings`` of a tied model, the merged embedding is also the
head by default (tied; the model card says so and the check compares against an unmerged reference whose head is the
adapted embedding). ``untie_embeddings`` writes ``lm_head.weight`` = the base embedding instead
(``share_input_output_layers: false``), which equals Apple's unmerged model exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from elmtune import __version__
from elmtune.adapters.config import AdapterError
from elmtune.adapters.merge import AdapterCheckpoint, read_adapter
from elmtune.adapters.merged_checkpoint import CARD_FILE, copy_tokenizer, write_config, write_report
from elmtune.adapters.model_card import render_model_card, training_data
from elmtune.adapters.streaming import (
    EMBEDDING_KEY,
    AdapterLayout,
    adapter_layout,
    check_adapter_fits,
    merged_tensors,
    output_specs,
)
from elmtune.adapters.tensor_files import (
    SafetensorsSource,
    ShardedSafetensorsWriter,
    StateDictSource,
    TensorSource,
    parse_size,
)
from elmtune.adapters.verify import PROBE_TEXTS, VerifyBudget, VerifyResult, verify_merge
from elmtune.errors import ElmtuneError
from elmtune.output_paths import StagedDirectory

DEFAULT_MAX_SHARD_SIZE = "5GB"
REPORT_FORMAT = "elmtune-merge-report"


class MergeError(ElmtuneError):
    """A merge that cannot be done as asked (wrong base, unsupported adapter, bad option)."""


class MergeVerificationError(MergeError):
    """The merged model drifted from the unmerged reference beyond the budget; nothing was written.

    Attributes:
        result: The failed :class:`VerifyResult`.
    """

    def __init__(self, message: str, result: VerifyResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class MergeOptions:
    """How to merge.

    Attributes:
        dtype: Output dtype (``fp32``, ``bf16``, ``fp16``...); None or ``auto``: the base's.
        untie_embeddings: Write a separate ``lm_head.weight`` (the base embedding) so the merged model equals the
            unmerged adapter even when the embedding is adapted.
        low_memory: Read the base tensor by tensor from its safetensors files instead of loading it.
        verify: Run the merge check (strongly recommended).
        budget: Override the output dtype's check budget.
        max_shard_size: Largest safetensors file (bytes or ``"5GB"``); above it the checkpoint is sharded.
        overwrite: Replace an existing output directory.
        device: Where the check computes.
        progress: Show a progress bar.
        probe_texts: The check's prompts.
    """

    dtype: str | None = None
    untie_embeddings: bool = False
    low_memory: bool = False
    verify: bool = True
    budget: VerifyBudget | None = None
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    overwrite: bool = False
    device: str = "cpu"
    progress: bool = False
    probe_texts: tuple[str, ...] = field(default=PROBE_TEXTS)

    def __post_init__(self) -> None:
        from elmtune.models.loading import resolve_dtype

        try:
            dtype = resolve_dtype(self.dtype)
            object.__setattr__(self, "max_shard_size", parse_size(self.max_shard_size))
        except ValueError as err:
            raise MergeError(str(err)) from None
        if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise MergeError(f"output dtype must be fp32, bf16 or fp16, got {self.dtype!r}")
        if not self.probe_texts:
            raise MergeError("probe_texts is empty")

    @property
    def torch_dtype(self) -> torch.dtype | None:
        from elmtune.models.loading import resolve_dtype

        return resolve_dtype(self.dtype)


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_to_directory` wrote.

    Attributes:
        path: The checkpoint directory.
        report: The content of its ``merge_report.json``.
        verification: The check's result (None with ``verify=False``).
    """

    path: Path
    report: dict[str, Any]
    verification: VerifyResult | None


def _read_openelm_config(path: Path) -> Any:
    from elmtune.models.configuration import OpenELMConfig

    config_file = path / "config.json"
    if not config_file.is_file():
        raise MergeError(f"'{path}' has no config.json; is it a model directory?")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != "openelm":
        raise MergeError(f"{config_file} has model_type {model_type!r}; elmtune merges into OpenELM bases only")
    return OpenELMConfig.from_pretrained(str(path))


def _base_directory(base: str) -> Path:
    """The local directory of a base for ``low_memory``: a path, or a hub id resolved through the Hugging Face cache."""
    from elmtune.models.loading import is_preset

    path = Path(base).expanduser()
    if path.is_dir():
        return path
    if is_preset(base):
        raise MergeError(f"'{base}' is a preset with random weights and no files; --low-memory needs a checkpoint dir")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one line
        reason = type(err).__name__
        raise MergeError(f"cannot find base '{base}' locally or on the Hub ({reason}); pass a directory") from None


def _open_base(base: str, low_memory: bool) -> tuple[Any, TensorSource, Path | None]:
    """(config, tensor source, local directory or None) of the base."""
    if low_memory:
        path = _base_directory(base)
        return _read_openelm_config(path), SafetensorsSource.from_directory(path), path
    from elmtune.models.loading import load_model
    from elmtune.models.modeling import saved_keys

    model = load_model(base)
    if getattr(model.config, "model_type", None) != "openelm":
        raise MergeError(f"'{base}' is a {model.config.model_type} model; elmtune merges into OpenELM bases only")
    path = Path(base).expanduser()
    state = model.state_dict()
    return model.config, StateDictSource({k: state[k] for k in saved_keys(model)}), path if path.is_dir() else None


def _check_adapter(checkpoint: AdapterCheckpoint, skeleton: torch.nn.Module, adapter_dir: Path) -> None:
    from elmtune.adapters.io import check_signature

    peft_type = str(checkpoint.peft_config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise MergeError(f"{adapter_dir} is a {peft_type} adapter; only LoRA and DoRA adapters can be merged")
    if checkpoint.metadata is not None:
        check_signature(skeleton, checkpoint.metadata.get("base", {}), str(adapter_dir))


def _embedding_note(adapted: bool, base_tied: bool, untie: bool) -> str:
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
class _MergeFacts:
    """What the report says besides the check: the merge's inputs, output dtype and head handling."""

    base: str
    base_dtype: torch.dtype
    adapter_dir: Path
    out_dir: Path
    dtype: torch.dtype
    layout: AdapterLayout
    base_tied: bool
    untie: bool
    low_memory: bool


def _merge_report(
    facts: _MergeFacts,
    checkpoint: AdapterCheckpoint,
    files: list[str],
    verification: VerifyResult | None,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The content of ``merge_report.json`` (also what the model card is rendered from)."""
    metadata = checkpoint.metadata or {}
    peft = checkpoint.peft_config
    layout = facts.layout
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "elmtune_version": __version__,
        "output": str(facts.out_dir),
        "base": facts.base,
        "base_dtype": str(facts.base_dtype).removeprefix("torch."),
        "adapter": {
            "path": str(facts.adapter_dir),
            "method": "dora" if layout.dora else "lora",
            "trained_on": metadata.get("base_model"),
            "config": metadata.get("adapter_config"),
            "peft": {k: peft.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora")},
        },
        "training_data": training_data(facts.adapter_dir),
        "dtype": str(facts.dtype).removeprefix("torch."),
        "arithmetic": "fp32, rounded once to the output dtype",
        "embeddings": {
            "adapted": layout.touches_embedding,
            "tied": facts.base_tied and not facts.untie,
            "untied_by_request": facts.untie,
            "note": _embedding_note(layout.touches_embedding, facts.base_tied, facts.untie),
        },
        "low_memory": facts.low_memory,
        "changed_tensors": sorted(layout.adapted_keys | layout.replaced_keys),
        "files": sorted([*files, CARD_FILE, "merge_report.json"]),
        "verification": None if verification is None else verification.to_dict(),
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
    }


def merge_to_directory(
    base: str | Path, adapter_dir: str | Path, out_dir: str | Path, options: MergeOptions | None = None
) -> MergeResult:
    """Merge an adapter into a base model and write a checked OpenELM checkpoint directory.

    The output path is checked first (before the adapter or the base is read) and the adapter is checked against the
    base (every module it adapts must exist there, with the update's shape) before anything is written. The directory
    is built as a hidden sibling and renamed into place only when complete and checked; any failure (the check, an
    error, a full disk, Ctrl-C) leaves the output path as it was.

    Args:
        base: The base: a preset, a hub id or a checkpoint directory (a directory or cached hub id with
            ``low_memory``).
        adapter_dir: An adapter directory (elmtune or plain peft, LoRA or DoRA).
        out_dir: The directory to create.
        options: See :class:`MergeOptions`.

    Returns:
        A :class:`MergeResult`.

    Raises:
        MergeVerificationError: The check failed; the output directory was not created.
        MergeError: An unusable base, adapter or option.
        AdapterError: An adapter that does not fit the base.
        OutputPathError: An output path that exists (without ``overwrite``), is a file or is not writable.
        OutputWriteError: The disk filled up while writing; nothing was left behind.
    """
    from rich.progress import track

    from elmtune.models.modeling import OpenELMForCausalLM, saved_keys

    options = options or MergeOptions()
    start = time.perf_counter()
    adapter_dir, out_dir = Path(adapter_dir).expanduser(), Path(out_dir).expanduser()
    staged = StagedDirectory(out_dir, overwrite=options.overwrite)
    checkpoint = read_adapter(adapter_dir)
    config, source, base_dir = _open_base(str(base), options.low_memory)
    with torch.device("meta"):
        skeleton = OpenELMForCausalLM(config)
    _check_adapter(checkpoint, skeleton, adapter_dir)
    check_adapter_fits(source, checkpoint, str(adapter_dir))  # before anything is written, verified or not
    base_tied = bool(config.share_input_output_layers)
    facts = _MergeFacts(
        base=str(base),
        base_dtype=source.dtype(EMBEDDING_KEY),
        adapter_dir=adapter_dir,
        out_dir=out_dir,
        dtype=options.torch_dtype or source.dtype(EMBEDDING_KEY),
        layout=adapter_layout(checkpoint),
        base_tied=base_tied,
        untie=options.untie_embeddings and base_tied,
        low_memory=options.low_memory,
    )
    tied = base_tied and not facts.untie
    specs = output_specs(source, saved_keys(skeleton), facts.dtype, untie=facts.untie)

    with staged as tmp:
        writer = ShardedSafetensorsWriter(tmp, specs, int(options.max_shard_size))
        try:
            tensors = merged_tensors(source, checkpoint, specs)
            for key, tensor in track(tensors, total=len(specs), description="merge", disable=not options.progress):
                writer.write(key, tensor)
        finally:
            writer.close()
        files = writer.finish()
        write_config(tmp, config, facts.dtype, tied=tied)
        files += ["config.json", *copy_tokenizer(tmp, base_dir)]
        merge_seconds = time.perf_counter() - start
        verification = None
        if options.verify:
            try:
                verification = verify_merge(
                    config,
                    source,
                    checkpoint,
                    _read_openelm_config(tmp),
                    SafetensorsSource.from_directory(tmp),
                    adapted_head=tied and facts.layout.touches_embedding,
                    budget=options.budget or VerifyBudget.for_dtype(facts.dtype),
                    probe_texts=options.probe_texts,
                    device=options.device,
                )
            except AdapterError as err:
                raise MergeError(f"cannot check the merge: {err}") from None
        seconds = {"merge": merge_seconds, "total": time.perf_counter() - start}
        report = _merge_report(facts, checkpoint, files, verification, seconds)
        if verification is not None and not verification.passed:
            raise MergeVerificationError(
                f"merge check failed against {verification.reference}: {'; '.join(verification.failures)}. "
                f"Nothing was written to {out_dir}.",
                verification,
            )
        write_report(tmp, report)
        (tmp / CARD_FILE).write_text(render_model_card(report), encoding="utf-8")
        path = staged.commit()
    return MergeResult(path=path, report=report, verification=verification)


__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "MergeError",
    "MergeOptions",
    "MergeResult",
    "MergeVerificationError",
    "merge_to_directory",
]

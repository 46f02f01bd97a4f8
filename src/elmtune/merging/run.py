"""``merge_to_directory``: base + adapter -> a verified, self-describing checkpoint directory.

Steps: check the output path; read the adapter and check it fits the base (geometry fingerprint, and every adapted
module present in the base with the update's shape); open the base, either loaded in memory
(any preset, hub id or directory) or, with ``low_memory``, as its safetensors files read one tensor at a time; merge
tensor by tensor in fp32 and round once to the output dtype (:mod:`elmtune.merging.merge`), writing straight
into a staged directory; write config, tokenizer, report and model card; run the merge check
(:func:`elmtune.merging.verify.verify_merge`); rename the staged directory into place only if the check passed.
The adapter is read and parsed once; every step takes the :class:`ParsedAdapter`. A base that is not OpenELM (any
transformers causal LM) takes the same steps in memory, with its own keys, config and check
(:mod:`elmtune.merging.transformers_base`).

The output head: when the adapter touches ``token_embeddings`` of a tied model, the merged embedding is also the
head by default (tied; the model card says so and the check compares against an unmerged reference whose head is the
adapted embedding). ``untie_embeddings`` writes ``lm_head.weight`` = the base embedding instead
(``share_input_output_layers: false``), which equals Apple's unmerged model exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elmtune.adapters.config import AdapterError
from elmtune.adapters.quantized_base import QuantizedBaseRecord
from elmtune.merging.adapter import EMBEDDING_KEY, AdapterCheckpoint, ParsedAdapter, parse_adapter, read_adapter
from elmtune.merging.dequantized_source import DequantizedSource
from elmtune.merging.merge import check_adapter_fits, merged_tensors, output_specs
from elmtune.merging.merged_checkpoint import CARD_FILE, copy_tokenizer, write_config
from elmtune.merging.model_card import render_model_card, training_data
from elmtune.merging.options import MergeError, MergeOptions, VerifyBudget
from elmtune.merging.report import REPORT_FILE, HeadHandling, MergedAdapter, MergeReport, MergeTimings
from elmtune.merging.run_report import write_merge_report
from elmtune.merging.safetensors_writer import ShardedSafetensorsWriter, TensorSpec
from elmtune.merging.sources import SafetensorsSource, StateDictSource, TensorSource
from elmtune.merging.transformers_base import (
    TransformersBase,
    copy_base_tokenizer,
    open_transformers_base,
    refuse_tied_embedding_adapter,
    verify_transformers_merge,
    write_transformers_config,
)
from elmtune.merging.verify import VerifyResult, verify_merge
from elmtune.output_paths import StagedDirectory


class MergeVerificationError(MergeError):
    """The merged model drifted from the unmerged reference beyond the budget; nothing was written.

    Attributes:
        result: The failed :class:`VerifyResult`.
    """

    def __init__(self, message: str, result: VerifyResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_to_directory` wrote.

    Attributes:
        path: The checkpoint directory.
        report: What it wrote and how (the content of its ``merge_report.json``).
    """

    path: Path
    report: MergeReport

    @property
    def verification(self) -> VerifyResult | None:
        """The check's result (None with ``verify=False``)."""
        return self.report.verification


def _read_openelm_config(path: Path) -> Any:
    from elmtune.models.configuration import OpenELMConfig

    config_file = path / "config.json"
    if not config_file.is_file():
        raise MergeError(f"'{path}' has no config.json; is it a model directory?")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != "openelm":
        raise MergeError(
            f"{config_file} has model_type {model_type!r}; --low-memory streams OpenELM bases only, merge it without"
        )
    return OpenELMConfig.from_pretrained(str(path))


def _base_directory(base: str) -> Path:
    """The local directory of a base for ``low_memory``: a path, or a hub id resolved through the Hugging Face cache."""
    from elmtune.models.model_names import is_preset

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


def _open_base(base: str, low_memory: bool) -> tuple[Any, TensorSource, Path | None, TransformersBase | None]:
    """(config, tensor source, local directory or None, the loaded base when it is not OpenELM) of the base."""
    if low_memory:
        path = _base_directory(base)
        return _read_openelm_config(path), SafetensorsSource.from_directory(path), path, None
    from elmtune.models.loading import load_model
    from elmtune.models.modeling import saved_keys

    model = load_model(base)
    path = Path(base).expanduser()
    directory = path if path.is_dir() else None
    if getattr(model.config, "model_type", None) != "openelm":
        other = open_transformers_base(model)
        return model.config, other.source, directory, other
    state = model.state_dict()
    return model.config, StateDictSource({k: state[k] for k in saved_keys(model)}), directory, None


def _check_adapter(checkpoint: AdapterCheckpoint, skeleton: torch.nn.Module, adapter_dir: Path) -> None:
    """Refuse an adapter of another kind than LoRA/DoRA, or one trained on a base of another geometry."""
    from elmtune.adapters.base_signature import check_signature

    peft_type = str(checkpoint.peft_config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise MergeError(f"{adapter_dir} is a {peft_type} adapter; only LoRA and DoRA adapters can be merged")
    if checkpoint.metadata is not None:
        check_signature(skeleton, checkpoint.metadata.get("base", {}), str(adapter_dir))


def _adapter_summary(adapter: ParsedAdapter, adapter_dir: Path) -> MergedAdapter:
    metadata = adapter.checkpoint.metadata or {}
    peft = adapter.checkpoint.peft_config
    return MergedAdapter(
        path=str(adapter_dir),
        method="dora" if adapter.dora else "lora",
        trained_on=metadata.get("base_model"),
        config=metadata.get("adapter_config"),
        peft={k: peft.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora")},
    )


@dataclass(frozen=True)
class _MergePlan:
    """Everything a merge has decided before it writes: inputs, output tensors, dtype and head."""

    base: str
    adapter_dir: Path
    out_dir: Path
    adapter: ParsedAdapter
    config: Any
    source: TensorSource
    base_dir: Path | None
    specs: list[TensorSpec]
    dtype: torch.dtype
    head: HeadHandling
    options: MergeOptions
    other: TransformersBase | None = None
    """The loaded base when it is not OpenELM (see :mod:`elmtune.merging.transformers_base`)."""

    @property
    def embedding_key(self) -> str:
        """The base's token embedding key."""
        return EMBEDDING_KEY if self.other is None else self.other.embedding_key


def _base_layout(config: Any, other: TransformersBase | None, options: MergeOptions) -> tuple[Any, list[str], bool]:
    """(meta or loaded model for the geometry check, the merged checkpoint's keys, whether the base head is tied)."""
    if other is not None:
        if options.untie_embeddings:
            raise MergeError(f"--untie-embeddings applies to OpenELM bases only, not to this {config.model_type} base")
        return other.model, other.source.keys(), other.tied
    from elmtune.models.modeling import OpenELMForCausalLM, saved_keys

    with torch.device("meta"):
        skeleton = OpenELMForCausalLM(config)
    return skeleton, saved_keys(skeleton), bool(config.share_input_output_layers)


def _plan(base: str, adapter_dir: Path, out_dir: Path, options: MergeOptions) -> _MergePlan:
    """Read the adapter and open the base, check that they fit, and plan the output (nothing is written yet)."""
    from elmtune.models.dtypes import resolve_dtype

    checkpoint = read_adapter(adapter_dir)
    config, source, base_dir, other = _open_base(base, options.low_memory)
    record = (checkpoint.metadata or {}).get("base_quantization")
    if record is not None:  # trained on a quantised base: merge into the weights it computed with
        if other is not None:
            raise MergeError(f"{adapter_dir} was trained on a quantised base; merging it needs an OpenELM base")
        source = DequantizedSource(source, QuantizedBaseRecord.from_dict(record, str(adapter_dir)))
    skeleton, keys, base_tied = _base_layout(config, other, options)
    _check_adapter(checkpoint, skeleton, adapter_dir)
    adapter = parse_adapter(checkpoint)
    if other is not None:
        refuse_tied_embedding_adapter(other, adapter, adapter_dir)
    check_adapter_fits(source, adapter, str(adapter_dir))  # before anything is written, verified or not
    embedding_key = EMBEDDING_KEY if other is None else other.embedding_key
    dtype = resolve_dtype(options.dtype_name) or source.dtype(embedding_key)
    head = HeadHandling.decide(embedding_key in adapter.adapted_keys, base_tied, options.untie_embeddings)
    specs = output_specs(source, keys, dtype, untie=head.untied_by_request)
    return _MergePlan(base, adapter_dir, out_dir, adapter, config, source, base_dir, specs, dtype, head, options, other)


def _write_checkpoint(plan: _MergePlan, tmp: Path) -> list[str]:
    """Write the merged tensors, config and tokenizer into ``tmp``; return the files written."""
    from elmtune.progress import Progress

    writer = ShardedSafetensorsWriter(tmp, plan.specs, int(plan.options.max_shard_size))
    try:
        tensors = merged_tensors(plan.source, plan.adapter, plan.specs)
        with Progress(len(plan.specs), "merge", "tensors", enabled=plan.options.progress) as progress:
            for key, tensor in progress.track(tensors):
                writer.write(key, tensor)
    finally:
        writer.close()
    files = writer.finish()
    if plan.other is not None:
        write_transformers_config(tmp, plan.config, plan.dtype)
        return [*files, "config.json", *copy_base_tokenizer(tmp, plan.base_dir)]
    write_config(tmp, plan.config, plan.dtype, tied=plan.head.tied)
    return [*files, "config.json", *copy_tokenizer(tmp, plan.base_dir)]


def _check_merge(plan: _MergePlan, tmp: Path) -> VerifyResult | None:
    """The merge check of the checkpoint in ``tmp`` (None when ``verify`` is off)."""
    if not plan.options.verify:
        return None
    budget = plan.options.budget or VerifyBudget.for_dtype(plan.dtype)
    try:
        if plan.other is not None:
            return verify_transformers_merge(
                plan.other,
                plan.adapter,
                tmp,
                base_dir=plan.base_dir,
                budget=budget,
                probe_texts=plan.options.probe_texts,
                device=plan.options.device,
            )
        return verify_merge(
            plan.config,
            plan.source,
            plan.adapter,
            _read_openelm_config(tmp),
            SafetensorsSource.from_directory(tmp),
            adapted_head=plan.head.tied and plan.head.adapted,
            budget=budget,
            probe_texts=plan.options.probe_texts,
            device=plan.options.device,
        )
    except AdapterError as err:
        raise MergeError(f"cannot check the merge: {err}") from None


def _quantized_keys(plan: _MergePlan) -> list[str]:
    """The base keys merged from dequantised weights (none unless the adapter was trained on a quantised base)."""
    return plan.source.quantized_keys if isinstance(plan.source, DequantizedSource) else []


def _report(
    plan: _MergePlan, files: list[str], verification: VerifyResult | None, timings: MergeTimings
) -> MergeReport:
    """The report of a merge planned as ``plan`` that wrote ``files``."""
    adapter = plan.adapter
    return MergeReport(
        output=str(plan.out_dir),
        base=plan.base,
        base_dtype=str(plan.source.dtype(plan.embedding_key)).removeprefix("torch."),
        model_type=str(plan.config.model_type),
        adapter=_adapter_summary(adapter, plan.adapter_dir),
        training_data=training_data(plan.adapter_dir),
        dtype=str(plan.dtype).removeprefix("torch."),
        head=plan.head,
        low_memory=plan.options.low_memory,
        base_quantization=plan.source.kind if isinstance(plan.source, DequantizedSource) else None,
        changed_tensors=tuple(sorted(adapter.adapted_keys | set(adapter.replaced) | set(_quantized_keys(plan)))),
        files=tuple(sorted([*files, CARD_FILE, REPORT_FILE])),
        verification=verification,
        seconds=timings,
    )


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
    options = options or MergeOptions()
    start = time.perf_counter()
    adapter_dir, out_dir = Path(adapter_dir).expanduser(), Path(out_dir).expanduser()
    staged = StagedDirectory(out_dir, overwrite=options.overwrite)
    plan = _plan(str(base), adapter_dir, out_dir, options)
    with staged as tmp:
        files = _write_checkpoint(plan, tmp)
        merge_seconds = time.perf_counter() - start
        verification = _check_merge(plan, tmp)
        report = _report(plan, files, verification, MergeTimings(merge_seconds, time.perf_counter() - start))
        if verification is not None and not verification.passed:
            raise MergeVerificationError(
                f"merge check failed against {verification.reference}: {'; '.join(verification.failures)}. "
                f"Nothing was written to {out_dir}.",
                verification,
            )
        report.write(tmp)
        (tmp / CARD_FILE).write_text(render_model_card(report), encoding="utf-8")
        path = staged.commit()
    write_merge_report(path)  # after the merged directory is published: it stays intact
    return MergeResult(path=path, report=report)


__all__ = [
    "MergeResult",
    "MergeVerificationError",
    "merge_to_directory",
]

"""Merging adapters into OpenELM and other transformers checkpoints, checking the result, and combining adapters.

A merge reads the adapter once (:func:`read_adapter`) and parses it once into typed updates (:func:`parse_adapter`,
:class:`ParsedAdapter`), then streams the base tensor by tensor from a :class:`TensorSource` (a loaded model's
state dict or its safetensors files: one implementation, :mod:`elmtune.merging.merge`), writes a staged checkpoint
directory, checks it against the unmerged adapter (:mod:`elmtune.merging.verify`) and moves it into place. See
``docs/merging.md``.

Typical use::

    from elmtune.merging import MergeOptions, merge_to_directory
    result = merge_to_directory("apple/OpenELM-270M", "runs/lora/final", "merged/", MergeOptions(dtype="bf16"))
    print(result.report.verification.passed)
"""

from __future__ import annotations

from elmtune.lazy_exports import export_names, lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "adapter": (
        "EMBEDDING_KEY",
        "AdapterCheckpoint",
        "AdapterTarget",
        "ParsedAdapter",
        "parse_adapter",
        "read_adapter",
    ),
    "combine": ("CombineOptions", "CombineResult", "Combination", "combine_adapters", "combine_checkpoints"),
    "merge": ("HEAD_KEY", "check_adapter_fits", "merge_tensor", "merged_tensors", "output_specs", "target_delta"),
    "report": ("HeadHandling", "MergedAdapter", "MergeReport", "MergeTimings"),
    "options": ("PROBE_TEXTS", "MergeError", "MergeOptions", "VerifyBudget", "parse_size"),
    "run": ("MergeResult", "MergeVerificationError", "merge_to_directory"),
    "sources": ("OverlaySource", "SafetensorsSource", "StateDictSource", "TensorSource"),
    "verify": ("LogitComparison", "VerifyResult", "verify_merge"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = export_names(_EXPORTS)

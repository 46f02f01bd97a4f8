"""OpenELM-aware LoRA and DoRA on top of peft.

What elmtune adds to peft: OpenELM target presets and sub-projections inside the fused ``qkv_proj``/``proj_1``,
layer-wise ranks, DoRA that does not recompute the base matmul under dropout, fp32 adapters on half-precision bases,
and self-describing PEFT-format adapter directories. See ``docs/adapters.md``; merging an adapter into its base is
:mod:`elmtune.merging`.

Typical use::

    from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
    model = apply_adapter(load_model("270M"), AdapterConfig(method="dora", targets=("q", "v")))
    ...  # train
    save_adapter(model, "out/adapter", base_name="apple/OpenELM-270M")
"""

from __future__ import annotations

from elmtune.lazy_exports import export_names, lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "apply": ("AdapterState", "adapter_state", "apply_adapter", "build_lora_config"),
    "config": ("AdapterConfig", "AdapterError"),
    "fused": ("RowSplitLinear", "fuse_split_modules", "split_fused_modules"),
    "adapter_dir": ("read_metadata",),
    "base_signature": ("base_signature",),
    "io": ("load_adapter", "save_adapter"),
    "ranks": ("module_ranks",),
    "state": ("ModuleParameters", "ParameterReport", "disable_adapters", "trainable_parameter_report"),
    "targets": ("OPENELM_PRESETS", "SUB_PROJECTIONS", "Target", "TargetPlan", "resolve_targets"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = export_names(_EXPORTS)

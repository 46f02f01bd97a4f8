"""OpenELM-aware LoRA and DoRA on top of peft.

What elmtune adds to peft: OpenELM target presets and sub-projections inside the fused ``qkv_proj``/``proj_1``,
layer-wise ranks, DoRA that does not recompute the base matmul under dropout, fp32 adapters on half-precision bases,
self-describing PEFT-format adapter directories, and a merge that needs no model code. See ``docs/adapters.md``.

Typical use::

    from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
    model = apply_adapter(load_model("270M"), AdapterConfig(method="dora", targets=("q", "v")))
    ...  # train
    save_adapter(model, "out/adapter", base_name="apple/OpenELM-270M")
"""

from torch import nn

from elmtune.adapters.apply import AdapterState, adapter_state, apply_adapter, build_lora_config
from elmtune.adapters.config import AdapterConfig, AdapterError
from elmtune.adapters.fused import RowSplitLinear, fuse_split_modules, split_fused_modules
from elmtune.adapters.io import base_signature, load_adapter, read_metadata, save_adapter
from elmtune.adapters.merge import (
    AdapterCheckpoint,
    WeightDelta,
    adapter_deltas,
    merge_and_unload,
    merge_state_dict,
    read_adapter,
)
from elmtune.adapters.ranks import module_ranks
from elmtune.adapters.state import ModuleParameters, ParameterReport, disable_adapters, trainable_parameter_report
from elmtune.adapters.targets import OPENELM_PRESETS, SUB_PROJECTIONS, Target, TargetPlan, resolve_targets


def target_module_names(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Full names of the modules ``cfg`` adapts on ``model`` (sub-projections as ``...qkv_proj.q``).

    Raises:
        AdapterError: A target matches nothing; the message lists the available module names.
    """
    return resolve_targets(model, cfg).names


__all__ = [
    "OPENELM_PRESETS",
    "SUB_PROJECTIONS",
    "AdapterCheckpoint",
    "AdapterConfig",
    "AdapterError",
    "AdapterState",
    "ModuleParameters",
    "ParameterReport",
    "RowSplitLinear",
    "Target",
    "TargetPlan",
    "WeightDelta",
    "adapter_deltas",
    "adapter_state",
    "apply_adapter",
    "base_signature",
    "build_lora_config",
    "disable_adapters",
    "fuse_split_modules",
    "load_adapter",
    "merge_and_unload",
    "merge_state_dict",
    "module_ranks",
    "read_adapter",
    "read_metadata",
    "resolve_targets",
    "save_adapter",
    "split_fused_modules",
    "target_module_names",
    "trainable_parameter_report",
]

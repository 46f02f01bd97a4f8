"""``apply_adapter``: resolve an :class:`AdapterConfig` against a model and wrap it with peft.

The flow is: resolve targets -> split fused modules that have sub-projection targets -> build a ``LoraConfig`` with
explicit ``target_modules``, ``rank_pattern`` and ``alpha_pattern`` -> ``peft.get_peft_model`` with elmtune's LoRA
layer classes (fast DoRA; DoRA on embeddings falls back to LoRA). Only adapter parameters are trainable, and they are
fp32 even on a bf16/fp16 base.

On a quantised base (QLoRA, :mod:`elmtune.models.quantize`) the Linear layers are quantised after the split and
before peft wraps them, and peft's bitsandbytes LoRA/DoRA layers (``peft.tuners.lora.bnb``) adapt them: elmtune's
layer classes apply to full-precision Linears only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from elmtune.adapters.config import AdapterConfig, AdapterError
from elmtune.adapters.dora import custom_module_mapping
from elmtune.adapters.fused import split_fused_modules
from elmtune.adapters.ranks import rank_and_alpha_patterns
from elmtune.adapters.targets import TargetPlan, layer_index, resolve_targets
from elmtune.errors import ConfigError
from elmtune.models.quantize import BaseQuantization, quantize_linears

DEFAULT_ADAPTER = "default"


@dataclass
class AdapterState:
    """What elmtune remembers about an adapter on a ``PeftModel`` (attribute ``elmtune_adapter``).

    Attributes:
        config: The elmtune config (None for an adapter that came without one).
        adapter_name: peft's adapter name.
        initial: For PiSSA/OLoRA, the adapter tensors at initialisation (peft state-dict keys, CPU copies): saving
            converts the adapter to plain LoRA on the original base weights.
    """

    config: AdapterConfig | None
    adapter_name: str = DEFAULT_ADAPTER
    initial: dict[str, torch.Tensor] = field(default_factory=dict)


def adapter_state(model: nn.Module) -> AdapterState | None:
    """The :class:`AdapterState` of a model returned by ``apply_adapter``/``load_adapter`` (None otherwise)."""
    return model.__dict__.get("elmtune_adapter")


def norm_module_names(model: nn.Module, layers: tuple[int, ...] | None = None) -> list[str]:
    """Full names of the normalisation modules (RMSNorm/LayerNorm) with a weight, optionally within ``layers``."""
    names = []
    for name, module in model.named_modules():
        if "norm" not in type(module).__name__.lower() or not isinstance(getattr(module, "weight", None), nn.Parameter):
            continue
        index = layer_index(name)
        if layers is None or index is None or index in layers:
            names.append(name)
    return names


def _is_conv1d(model: nn.Module, name: str) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(model.get_submodule(name), Conv1D)


def lora_layer_mapping(quantized: bool = False) -> dict[type[nn.Module], type[nn.Module]]:
    """Base layer type -> elmtune LoRA layer to register with peft; on a quantised base, none for Linears.

    bitsandbytes' quantised layers subclass ``nn.Linear``: registering elmtune's Linear layer would wrap them as
    full-precision weights, so a quantised base leaves Linears to peft's own bitsandbytes dispatch.
    """
    mapping = custom_module_mapping()
    return {k: v for k, v in mapping.items() if k is not nn.Linear} if quantized else mapping


def build_lora_config(
    model: nn.Module, cfg: AdapterConfig, plan: TargetPlan | None = None, *, quantized: bool = False
) -> LoraConfig:
    """The peft ``LoraConfig`` for ``cfg`` on ``model`` (explicit target names, rank and alpha patterns).

    Args:
        model: The base model (used to resolve targets when ``plan`` is not given, and to find norms).
        cfg: The adapter config.
        plan: Targets already resolved by :func:`resolve_targets`.
        quantized: The base's Linear layers are (or will be) quantised (see :func:`lora_layer_mapping`).

    Returns:
        A ``LoraConfig`` with elmtune's layer classes registered (the registration is not serialised).

    Raises:
        AdapterError: Targets that match nothing, or a mix of ``Linear`` and GPT-2 ``Conv1D`` targets.
    """
    plan = plan or resolve_targets(model, cfg)
    rank_pattern, alpha_pattern = rank_and_alpha_patterns(plan.targets, cfg)
    linear = [t for t in plan.targets if not t.embedding]
    conv1d = [t for t in linear if t.fused is None and _is_conv1d(model, t.name)]
    if conv1d and len(conv1d) != len(linear):
        raise AdapterError("targets mix nn.Linear and GPT-2 Conv1D modules; adapt one kind per adapter")
    modules_to_save = norm_module_names(model, cfg.layers) if cfg.train_norms else None
    lora_config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=plan.names,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_dora=cfg.method == "dora",
        use_rslora=cfg.use_rslora,
        init_lora_weights=True if cfg.init == "default" else cfg.init,
        fan_in_fan_out=bool(conv1d),
        modules_to_save=modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
    )
    lora_config._register_custom_module(lora_layer_mapping(quantized))
    return lora_config


def _cast_output_to_input_dtype(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.to(args[0].dtype) if args and torch.is_tensor(args[0]) else output


def promote_trainable_norms(model: nn.Module) -> None:
    """Keep trainable norm copies (``train_norms``) in fp32 on a half-precision base; outputs keep the input dtype."""
    for module in model.modules():
        if not isinstance(module, ModulesToSaveWrapper):
            continue
        for copy in module.modules_to_save.values():
            if any(p.dtype in (torch.float16, torch.bfloat16) for p in copy.parameters()):
                copy.float()
                copy.register_forward_hook(_cast_output_to_input_dtype)


def reject_wrapped(model: nn.Module, hint: str = "start from the base model") -> None:
    """Refuse a model that already carries adapters (a peft wrapper or injected LoRA layers)."""
    if isinstance(model, PeftModel) or any(isinstance(m, LoraLayer) for m in model.modules()):
        raise AdapterError(f"this model already carries adapters; {hint}")


def wrap_with_peft(model: nn.Module, lora_config: LoraConfig, adapter_name: str) -> PeftModel:
    """Freeze ``model`` and wrap it with ``lora_config``'s adapter (fp32 on a half-precision base).

    Trainable norm copies become fp32 too, and the result keeps the base model's train/eval mode (peft's new modules,
    such as dropout, follow it).
    """
    training = model.training
    for param in model.parameters():
        param.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        peft_model = get_peft_model(model, lora_config, adapter_name=adapter_name, autocast_adapter_dtype=True)
    promote_trainable_norms(peft_model)
    peft_model.train(training)
    return peft_model


def apply_adapter(
    model: nn.Module,
    cfg: AdapterConfig,
    *,
    adapter_name: str = DEFAULT_ADAPTER,
    quantization: BaseQuantization | None = None,
) -> PeftModel:
    """Wrap ``model`` with a new LoRA/DoRA adapter described by ``cfg``.

    The base model is modified in place (fused modules with sub-projection targets are split into row blocks, target
    modules are replaced by peft layers); keep using the returned ``PeftModel``.

    Args:
        model: A base model (elmtune's OpenELM or any transformers causal LM).
        cfg: The adapter config.
        adapter_name: peft's adapter name.
        quantization: Quantise the base's Linear layers (after splitting fused modules) before the adapter goes on.

    Returns:
        The peft model, in the base model's train/eval mode; only adapter parameters (and norm copies with
        ``train_norms``) require gradients, and they are fp32 on a bf16/fp16 base.

    Raises:
        AdapterError: Targets that match nothing, a model that already has adapters, or invalid combinations.
        ConfigError: A base-rewriting initialisation (PiSSA, OLoRA) on a quantised base.
    """
    reject_wrapped(model)
    plan = resolve_targets(model, cfg)
    if cfg.method == "dora" and any(t.embedding for t in plan.targets):
        warnings.warn(
            "DoRA does not apply to embeddings: token_embeddings gets plain LoRA (as in Apple's CoreNet)",
            UserWarning,
            stacklevel=2,
        )
    if quantization is not None and cfg.rewrites_base:
        raise ConfigError(
            f"adapter.init {cfg.init} rewrites the base weights, which a quantised base (train.base_dtype "
            f"{quantization.kind}) cannot hold; use init default or a full-precision base",
            key="adapter.init",
        )
    lora_config = build_lora_config(model, cfg, plan, quantized=quantization is not None)
    split_fused_modules(model, plan.row_blocks)
    if quantization is not None:
        quantize_linears(model, quantization)  # the split blocks are quantised one by one
    peft_model = wrap_with_peft(model, lora_config, adapter_name)
    state = AdapterState(config=cfg, adapter_name=adapter_name)
    if cfg.rewrites_base:
        from peft import get_peft_model_state_dict

        initial = get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
        state.initial = {k: v.detach().to("cpu", copy=True) for k, v in initial.items() if "lora_" in k}
    peft_model.__dict__["elmtune_adapter"] = state
    return peft_model


__all__ = [
    "AdapterState",
    "adapter_state",
    "apply_adapter",
    "build_lora_config",
    "lora_layer_mapping",
    "norm_module_names",
    "promote_trainable_norms",
    "reject_wrapped",
    "wrap_with_peft",
]

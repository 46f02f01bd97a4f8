"""Adapter state on a live model: switching adapters off (the DPO reference) and counting trainable parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from elmtune.adapters.adapter_dir import PEFT_KEY_PREFIX
from elmtune.adapters.apply import adapter_state
from elmtune.adapters.config import AdapterError
from elmtune.adapters.targets import layer_index


@contextmanager
def disable_adapters(model: PeftModel) -> Iterator[PeftModel]:
    """Run ``model`` as its base model inside the block (adapters and trained norm copies off), then switch back.

    This is the DPO reference model: the same weights without a second copy. Adapters are switched back on in a
    ``finally`` clause, also when the block raises; nested use is safe.

    Args:
        model: A peft model from :func:`apply_adapter` or :func:`load_adapter`.

    Yields:
        The same model, adapters disabled.

    Raises:
        AdapterError: For PiSSA/OLoRA adapters, whose initialisation rewrote the base weights in memory (the model
            without adapters is then not the original base model).
    """
    if not isinstance(model, PeftModel):
        raise AdapterError("disable_adapters needs the PeftModel returned by apply_adapter or load_adapter")
    state = adapter_state(model)
    if state is not None and state.initial:
        raise AdapterError(
            f"init '{state.config.init}' rewrote the base weights in memory, so switching the adapter off does not "
            "give the original model; save the adapter and load it onto a fresh base model instead"
        )
    layers = [m for m in model.modules() if isinstance(m, (LoraLayer, ModulesToSaveWrapper))]
    already_disabled = bool(layers) and all(m.disable_adapters for m in layers)
    if already_disabled:
        yield model
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]  # peft's enable would mark adapters trainable
    model.base_model.disable_adapter_layers()
    try:
        yield model
    finally:
        model.base_model.enable_adapter_layers()
        for param, flag in flags:
            param.requires_grad_(flag)


@dataclass(frozen=True)
class ModuleParameters:
    """Adapter parameters of one module.

    Attributes:
        name: Module name in the base model (``transformer.layers.3.attn.qkv_proj.q``).
        kind: Short name (``qkv_proj``, ``q``, ``token_embeddings``, ``attn_norm``...).
        layer: Decoder-layer index, or None outside the blocks.
        rank: LoRA rank (0 for a trained norm copy).
        lora: Parameters of A and B.
        magnitude: DoRA magnitude parameters.
        other: Other adapter-owned parameters (trained norm copies).
        embedding: Whether the adapted module is an embedding.
    """

    name: str
    kind: str
    layer: int | None
    rank: int
    lora: int
    magnitude: int
    other: int
    embedding: bool = False

    @property
    def trainable(self) -> int:
        """All adapter parameters of the module: LoRA, DoRA magnitude and norm copies."""
        return self.lora + self.magnitude + self.other


@dataclass(frozen=True)
class ParameterReport:
    """Per-module adapter parameters and totals (what training updates)."""

    modules: tuple[ModuleParameters, ...]
    base_parameters: int

    @property
    def trainable(self) -> int:
        """Adapter parameters of all modules: what training updates."""
        return sum(m.trainable for m in self.modules)

    @property
    def embedding(self) -> int:
        """Adapter parameters on embedding modules."""
        return sum(m.trainable for m in self.modules if m.embedding)

    @property
    def magnitude(self) -> int:
        """DoRA magnitude parameters of all modules."""
        return sum(m.magnitude for m in self.modules)

    @property
    def norms(self) -> int:
        """Parameters of the trained norm copies (``train_norms``)."""
        return sum(m.other for m in self.modules)

    @property
    def fraction(self) -> float:
        """Trainable parameters as a fraction of the base model's parameters."""
        return self.trainable / self.base_parameters if self.base_parameters else 0.0

    def by_layer(self) -> dict[int | None, list[ModuleParameters]]:
        """Layer index (None: outside the blocks) -> its modules, layers in order."""
        out: dict[int | None, list[ModuleParameters]] = {}
        for m in sorted(self.modules, key=lambda m: (m.layer is None, m.layer or 0)):
            out.setdefault(m.layer, []).append(m)
        return out


def trainable_parameter_report(model: PeftModel) -> ParameterReport:
    """Ranks and adapter parameter counts per module, with totals, for the active adapter of ``model``.

    Args:
        model: A peft model.

    Returns:
        The report; ``base_parameters`` counts the base model's parameters (shared tensors once).
    """
    if not isinstance(model, PeftModel):
        raise AdapterError("trainable_parameter_report needs a PeftModel")
    adapter = model.active_adapter
    modules: list[ModuleParameters] = []
    seen: set[int] = set()
    base_total = 0
    for full_name, module in model.named_modules():
        name = full_name[len(PEFT_KEY_PREFIX) :] if full_name.startswith(PEFT_KEY_PREFIX) else full_name
        if isinstance(module, LoraLayer) and adapter in module.r:
            if adapter in module.lora_A:
                params = (*module.lora_A[adapter].parameters(), *module.lora_B[adapter].parameters())
                lora = sum(p.numel() for p in params)
            else:
                lora = module.lora_embedding_A[adapter].numel() + module.lora_embedding_B[adapter].numel()
            magnitude = (
                sum(p.numel() for p in module.lora_magnitude_vector[adapter].parameters())
                if adapter in module.lora_magnitude_vector
                else 0
            )
            modules.append(
                ModuleParameters(
                    name=name,
                    kind=name.rsplit(".", 1)[-1],
                    layer=layer_index(name),
                    rank=module.r[adapter],
                    lora=lora,
                    magnitude=magnitude,
                    other=0,
                    embedding=isinstance(module.get_base_layer(), nn.Embedding),
                )
            )
        elif isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save:
            count = sum(p.numel() for p in module.modules_to_save[adapter].parameters())
            modules.append(ModuleParameters(name, name.rsplit(".", 1)[-1], layer_index(name), 0, 0, 0, count))
    for name, param in model.named_parameters():
        if "lora_" in name or ".modules_to_save." in name or id(param) in seen:
            continue
        seen.add(id(param))
        base_total += param.numel()
    return ParameterReport(modules=tuple(modules), base_parameters=base_total)


__all__ = ["ModuleParameters", "ParameterReport", "disable_adapters", "trainable_parameter_report"]

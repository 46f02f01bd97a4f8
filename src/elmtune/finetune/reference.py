"""The reference model of preference optimisation, without a second copy of the base weights.

The reference is the policy's own peft model run another way, inside :func:`reference_mode`:

- a run that starts from a fresh adapter uses the base model: every adapter is switched off;
- a run that continues from a saved adapter (SFT -> DPO) uses the base plus that adapter, kept as a second, frozen
  adapter of the same peft model (:data:`REFERENCE_ADAPTER`) that is made the active one for the reference forward.
  This costs one extra adapter (megabytes) instead of a merged copy of the base.

On a quantised base (``train.base_dtype`` ``nf4``/``int8``) the reference is that same quantised base, run either way:
the policy and its reference differ by the adapter only, not by the quantisation error.

The reference forward runs without gradients and in eval mode (no adapter dropout), so it draws no random numbers
and gives the same values whether it is computed on the fly or once before training
(:mod:`elmtune.finetune.reference_cache`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

REFERENCE_ADAPTER = "reference"
"""peft's name of the frozen copy of the starting adapter that serves as the reference."""


@contextlib.contextmanager
def _active_adapter(model: nn.Module, name: str) -> Iterator[None]:
    """Make adapter ``name`` the active one of every adapter layer inside the block, then switch back.

    Unlike peft's ``set_adapter``, this leaves every parameter's ``requires_grad`` as it is.
    """
    layers = [m for m in model.modules() if isinstance(m, (LoraLayer, ModulesToSaveWrapper))]
    previous = [layer._active_adapter for layer in layers]
    try:
        for layer in layers:
            layer._active_adapter = [name]
        yield
    finally:
        for layer, active in zip(layers, previous, strict=True):
            layer._active_adapter = active


@contextlib.contextmanager
def reference_mode(model: nn.Module, adapter: str | None) -> Iterator[nn.Module]:
    """Run ``model`` as the reference inside the block: no gradients, eval mode, the reference adapter (or none).

    Args:
        model: The policy's ``PeftModel`` (a ``DistributedDataParallel`` wrapper is unwrapped).
        adapter: The frozen reference adapter's name, or None for the base model (adapters switched off).

    Yields:
        The peft model, running as the reference.
    """
    from elmtune.adapters import disable_adapters

    peft_model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    training = peft_model.training
    switch = disable_adapters(peft_model) if adapter is None else _active_adapter(peft_model, adapter)
    peft_model.eval()
    try:
        with torch.no_grad(), switch:
            yield peft_model
    finally:
        peft_model.train(training)


@dataclass(frozen=True, eq=False)
class ReferenceLogps:
    """Every training pair's reference log-probabilities, summed over its target tokens.

    Attributes:
        chosen: (N,) float32, of the chosen responses, by pair index.
        rejected: (N,) float32, of the rejected responses.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor

    def lookup(self, pair_index: torch.Tensor) -> torch.Tensor:
        """(2B,) the values of the pairs ``pair_index`` (B,), chosen first (the layout of the preference forward)."""
        index = pair_index.to(self.chosen.device)
        return torch.cat([self.chosen[index], self.rejected[index]])

    def to(self, device: torch.device) -> ReferenceLogps:
        """The same values on ``device``."""
        return ReferenceLogps(self.chosen.to(device), self.rejected.to(device))


__all__ = ["REFERENCE_ADAPTER", "ReferenceLogps", "reference_mode"]

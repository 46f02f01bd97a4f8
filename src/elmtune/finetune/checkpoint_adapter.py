"""Resume reads the adapter from a checkpoint's ``adapter/``: the PEFT-format directory users load, and nothing else.

Every trainable tensor of an elmtune adapter is in that directory: LoRA A/B (embedding ones included), DoRA
magnitudes and ``modules_to_save`` copies, under peft's state-dict keys (saved as fp32, so they restore bit for bit).
Two things in the file are not trainable tensors, and are handled here:

- PiSSA/OLoRA adapters are saved converted to plain LoRA on the original base: ``A' = [A; A0]`` and ``B' = [B, -B0]``
  (see :func:`elmtune.adapters.save_adapter`). The trained ``A`` and ``B`` are the leading blocks of ``A'`` and ``B'``.
- DoRA adapters with a LoRA embedding carry a magnitude plain peft needs; the model has no such parameter, so it is
  not read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from elmtune.adapters.adapter_dir import WEIGHTS_FILE
from elmtune.adapters.apply import adapter_state
from elmtune.errors import ElmtuneError


def _mismatch(adapter_dir: Path, first: str) -> ElmtuneError:
    return ElmtuneError(
        f"checkpoint {adapter_dir.parent} does not match this model's adapter (first difference: {first}); resume "
        "with the same model and adapter settings"
    )


def _leading_block(saved: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The block of ``saved`` at index 0 along every dimension with ``shape`` (A of ``[A; A0]``, B of ``[B, -B0]``)."""
    return saved[tuple(slice(0, n) for n in shape)].contiguous()


def restore_adapter(model: nn.Module, adapter_dir: Path) -> None:
    """Copy the adapter saved in ``adapter_dir`` into the trainable parameters of ``model``, exactly.

    Args:
        model: The ``PeftModel`` the run trains (the same model and adapter settings as the checkpoint's run).
        adapter_dir: A checkpoint's ``adapter/`` directory.

    Raises:
        ElmtuneError: The saved adapter does not fit: a tensor is missing or has another shape, or a trainable
            parameter of ``model`` is not in it.
    """
    state = adapter_state(model)
    name = state.adapter_name if state is not None else model.active_adapter
    converted = bool(state is not None and state.initial)
    saved = load_file(str(adapter_dir / WEIGHTS_FILE))
    expected = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    tensors = {}
    for key, current in expected.items():
        tensor = saved.get(key)
        if tensor is not None and converted and tensor.shape != current.shape:
            tensor = _leading_block(tensor, current.shape)
        if tensor is None or tensor.shape != current.shape:
            raise _mismatch(adapter_dir, key)
        tensors[key] = tensor
    with torch.no_grad():
        result = set_peft_model_state_dict(model, tensors, adapter_name=name)
    if result.unexpected_keys:
        raise _mismatch(adapter_dir, result.unexpected_keys[0])
    missing = set(result.missing_keys)
    untouched = [n for n, p in model.named_parameters() if p.requires_grad and n in missing]
    if untouched:
        raise _mismatch(adapter_dir, untouched[0])

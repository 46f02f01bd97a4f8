"""The model a run trains: the base with a new adapter, or with a saved adapter it continues from (``start_from``).

Continuing from a saved adapter (``elmtune train --adapter DIR``: SFT -> DPO, or more SFT) loads its weights as the
trainable adapter, with the targets, ranks and settings it was saved with; adapter settings given in the recipe or as
flags must agree with them. A preference run then also loads a frozen copy of it as the reference adapter (see
:mod:`elmtune.finetune.reference`). The final adapter is the one trained adapter, loadable on the plain base.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from elmtune.adapters.config import AdapterConfig
from elmtune.errors import ElmtuneError
from elmtune.finetune.config import RunConfig
from elmtune.finetune.reference import REFERENCE_ADAPTER
from elmtune.models.quantize import BaseQuantization


@dataclass
class Policy:
    """The model a run trains and how its preference reference is run.

    Attributes:
        model: The ``PeftModel``; only the trained adapter requires gradients.
        reference_adapter: The frozen reference adapter's name, or None when the reference is the base model.
        base_weights_sha256: Digest of the base model's config and weights (taken when asked, else None).
    """

    model: nn.Module
    reference_adapter: str | None
    base_weights_sha256: str | None = None


def _saved_adapter_config(adapter_dir: Path) -> AdapterConfig:
    """The elmtune adapter settings saved with the adapter in ``adapter_dir``.

    Raises:
        ElmtuneError: Not an adapter directory, no elmtune metadata, or an adapter saved converted (PiSSA/OLoRA).
    """
    from elmtune.adapters.adapter_dir import check_adapter_dir, read_metadata

    check_adapter_dir(adapter_dir)
    metadata = read_metadata(adapter_dir)
    if metadata is None or metadata.get("adapter_config") is None:
        raise ElmtuneError(
            f"--adapter {adapter_dir}: no elmtune adapter settings (elmtune_adapter.json); continue from an adapter "
            "that elmtune saved (a run's final/ directory)"
        )
    if metadata.get("converted_init"):
        raise ElmtuneError(
            f"--adapter {adapter_dir}: the adapter was initialised with {metadata['converted_init']} and saved "
            "converted to plain LoRA of twice the rank; continuing from it is not supported"
        )
    return AdapterConfig.from_dict(metadata["adapter_config"])


def with_starting_adapter(config: RunConfig) -> RunConfig:
    """``config`` with the adapter settings of its ``start_from`` adapter (``config`` itself without one).

    Reads only the adapter's metadata, so it can run before anything is written. An adapter setting given in the
    recipe or as a flag (one that differs from the default) must equal the saved one.

    Raises:
        ElmtuneError: An unusable adapter directory, or given adapter settings that contradict the saved ones (one
            line naming each).
    """
    if config.start_from is None:
        return config
    saved = _saved_adapter_config(Path(config.start_from))
    defaults = AdapterConfig()
    contradictions = [
        f"adapter.{spec.name} {getattr(config.adapter, spec.name)!r} (saved: {getattr(saved, spec.name)!r})"
        for spec in dataclasses.fields(AdapterConfig)
        if getattr(config.adapter, spec.name) not in (getattr(defaults, spec.name), getattr(saved, spec.name))
    ]
    if contradictions:
        raise ElmtuneError(
            f"--adapter {config.start_from}: the given adapter settings contradict the saved adapter's: "
            f"{', '.join(contradictions)}; leave them out or give the saved values"
        )
    return dataclasses.replace(config, adapter=saved)


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's config and of every parameter and buffer (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string(use_diff=False) if config is not None else type(model).__name__).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _quantization(config: RunConfig, base_dtype: torch.dtype | None) -> BaseQuantization | None:
    """The base quantisation ``train.base_dtype`` asks for (None for a full-precision base)."""
    kind = config.train.base_dtype
    if kind not in ("nf4", "int8"):
        return None
    return BaseQuantization(kind, base_dtype or torch.float32)


def build_policy(config: RunConfig, base_dtype: torch.dtype | None, *, digest_base: bool = False) -> Policy:
    """Load the base model and put the run's adapter on it (new, or continued from ``config.start_from``).

    Args:
        config: The run configuration (adapter settings as :func:`with_starting_adapter` gives them).
        base_dtype: dtype of the frozen base weights; with ``train.base_dtype`` ``nf4``/``int8``, the compute dtype
            that the quantised Linear layers compute in and the rest of the base keeps.
        digest_base: Take :func:`weights_sha256` of the base before the adapter goes on (for the reference cache).

    Returns:
        The :class:`Policy`.

    Raises:
        ElmtuneError: Bad adapter settings, or a starting adapter trained on another base model.
    """
    from elmtune.adapters import apply_adapter
    from elmtune.adapters.io import load_adapter, load_frozen_copy
    from elmtune.models import load_model

    model = load_model(config.model, dtype=base_dtype)
    digest = weights_sha256(model) if digest_base else None
    quantization = _quantization(config, base_dtype)
    if digest is not None and quantization is not None:  # the reference cache key tells the bases apart
        digest = hashlib.sha256(f"{digest}:{quantization.kind}".encode()).hexdigest()
    if config.train.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if config.start_from is None:
        return Policy(apply_adapter(model, config.adapter, quantization=quantization), None, digest)
    model = load_adapter(model, config.start_from, is_trainable=True, quantization=quantization)
    if config.train.objective != "dpo":
        return Policy(model, None, digest)
    load_frozen_copy(model, config.start_from, REFERENCE_ADAPTER)
    return Policy(model, REFERENCE_ADAPTER, digest)


__all__ = ["Policy", "build_policy", "weights_sha256", "with_starting_adapter"]

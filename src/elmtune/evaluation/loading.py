"""Loading what ``elmtune eval`` evaluates: a base model, base + adapter, a merged directory or any causal LM."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.errors import ElmtuneError
from elmtune.models.finite import require_finite_parameters

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What to evaluate.

    Attributes:
        model: A preset (``270M``, ``tiny``...), a hub id, or a local directory (a base, a merged checkpoint, or any
            transformers causal LM).
        adapter: A peft adapter directory to apply on top of ``model``.
        tokenizer: Tokenizer directory or hub id; default: the model directory's own tokenizer, else the bundled
            Llama-2 tokenizer.
    """

    model: str
    adapter: Path | None = None
    tokenizer: str | None = None

    @property
    def label(self) -> str:
        """A short name for tables: ``model`` or ``model + adapter``."""
        return self.model if self.adapter is None else f"{self.model} + {Path(self.adapter).name}"


def _attach_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """Apply a saved adapter (elmtune's or plain peft's) with elmtune's loader, frozen and in eval mode."""
    from elmtune.adapters import load_adapter

    return load_adapter(model, adapter)


def load_for_eval(
    spec: ModelSpec, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model (and adapter) for evaluation, in eval mode, with its tokenizer.

    Args:
        spec: Model, optional adapter and optional tokenizer.
        dtype: Weight dtype (``"bf16"``, ``"fp32"``, ...); None keeps the checkpoint's.
        device: Target device; None picks CUDA, then MPS, then the CPU.

    Returns:
        ``(model, tokenizer)``.
    """
    from elmtune.finetune.device import resolve_device
    from elmtune.models import load_model, load_tokenizer

    target = resolve_device(str(device)) if device is not None else default_device()
    model = load_model(spec.model, dtype=dtype)
    if spec.adapter is not None:
        model = _attach_adapter(model, Path(spec.adapter))
    model = model.to(target).eval()
    require_finite_parameters(
        model, spec.label if spec.adapter is None else f"{spec.model} with adapter {spec.adapter}"
    )
    tokenizer = load_tokenizer(spec.tokenizer if spec.tokenizer is not None else spec.model)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ElmtuneError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab}; pass --tokenizer"
        )
    return model, tokenizer


def default_device() -> torch.device:
    """CUDA if available, else MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

"""Load the model that replies: evaluation's loader (preset, hub id, local or merged directory, optional adapter)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from elmtune.errors import UsageError
from elmtune.inference.request import ModelSource


def load_for_generation(source: ModelSource) -> tuple[PreTrainedModel, Any]:
    """Load ``source`` in eval mode with its tokenizer, exactly as ``elmtune eval`` loads a model.

    Args:
        source: Model, optional adapter and tokenizer, device and dtype.

    Returns:
        ``(model, tokenizer)``; with an adapter, the model is the peft model with the adapter active.

    Raises:
        ModelNotFoundError: The model is not a preset, a directory or a reachable hub id.
        UsageError: An unknown dtype name.
        ElmtuneError: The adapter does not fit the model, or the weights are not finite.
    """
    from elmtune.evaluation.runner import ModelSpec, load_for_eval
    from elmtune.models.dtypes import resolve_dtype

    try:
        resolve_dtype(source.dtype)
    except ValueError as err:
        raise UsageError(f"--dtype: {err}") from None
    spec = ModelSpec(source.model, source.adapter, source.tokenizer)
    return load_for_eval(spec, dtype=source.dtype, device=source.device)


__all__ = ["load_for_generation"]

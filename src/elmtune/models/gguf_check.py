"""Run an exported GGUF with llama.cpp (through ``llama-cpp-python``) and compare its logits with elmtune's.

This is an optional end-to-end check of :func:`elmtune.models.gguf.export_gguf`: the same token ids go through
llama.cpp's OpenELM graph and through elmtune's model (fp32) loaded from the checkpoint directory, and the
next-token logits of every position are compared. ``llama-cpp-python`` is not a dependency of elmtune.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elmtune.errors import ElmtuneError

CHECK_TEXT = "The capital of France is Paris. Small language models can run on a phone."
"""Text whose token ids are fed to both implementations."""

INSTALL_HINT = "pip install llama-cpp-python"


class LlamaCppMissingError(ElmtuneError):
    """``--check`` was asked for, but ``llama-cpp-python`` is not installed."""


@dataclass(frozen=True)
class GGUFCheck:
    """Next-token logits of llama.cpp (running the GGUF) against elmtune's (fp32, from the checkpoint).

    Attributes:
        num_tokens: Positions compared.
        max_abs_diff: Largest absolute logit difference over all positions and vocabulary entries.
        mean_abs_diff: Mean absolute logit difference.
        logit_range: Largest absolute logit of elmtune's model, the scale the differences compare to.
        top1_agreement: Fraction of positions whose arg-max token is the same.
        tokenization_match: Whether llama.cpp tokenizes :data:`CHECK_TEXT` (with BOS) to the same ids as elmtune.
    """

    num_tokens: int
    max_abs_diff: float
    mean_abs_diff: float
    logit_range: float
    top1_agreement: float
    tokenization_match: bool

    def __post_init__(self) -> None:
        if self.num_tokens <= 0:
            raise ValueError("a check compares at least one position")
        if not 0.0 <= self.top1_agreement <= 1.0:
            raise ValueError(f"top1_agreement must be a fraction, got {self.top1_agreement}")


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` (the ``llama-cpp-python`` package) can be imported."""
    return importlib.util.find_spec("llama_cpp") is not None


def require_llama_cpp() -> None:
    """Raise :class:`LlamaCppMissingError` with install instructions unless ``llama-cpp-python`` is installed."""
    if not llama_cpp_available():
        raise LlamaCppMissingError(
            f"--check runs the GGUF with llama.cpp and needs llama-cpp-python, which is not installed "
            f"(`{INSTALL_HINT}`, it compiles llama.cpp); export without --check, or install it"
        )


def check_gguf(gguf_path: str | Path, model_dir: str | Path, text: str = CHECK_TEXT) -> GGUFCheck:
    """Compare the next-token logits of a GGUF file under llama.cpp with elmtune's model on the same token ids.

    Args:
        gguf_path: The exported file.
        model_dir: The checkpoint directory it was exported from.
        text: Text to tokenize (with BOS) with elmtune's tokenizer for the model directory.

    Returns:
        A :class:`GGUFCheck`.

    Raises:
        LlamaCppMissingError: If ``llama-cpp-python`` is not installed.
    """
    require_llama_cpp()
    import torch
    from llama_cpp import Llama

    from elmtune.models.loading import load_model
    from elmtune.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_dir if (Path(model_dir) / "tokenizer.model").is_file() else None)
    ids = tokenizer(text)["input_ids"]
    model = load_model(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].float().numpy()  # (L, vocab)

    llm = Llama(
        model_path=str(gguf_path),
        n_ctx=max(64, len(ids)),
        n_batch=max(64, len(ids)),
        logits_all=True,
        n_gpu_layers=0,
        n_threads=max(1, min(4, os.cpu_count() or 1)),
        type_k=0,  # GGML_TYPE_F32: an f32 KV cache (llama.cpp's default is f16), so only the file's types round
        type_v=0,
        verbose=False,
    )
    try:
        llama_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)  # (L, vocab)
    finally:
        close = getattr(llm, "close", None)  # older llama-cpp-python releases free the model on garbage collection
        if close is not None:
            close()
    diff = np.abs(theirs - ours)
    return GGUFCheck(
        num_tokens=len(ids),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        logit_range=float(np.abs(ours).max()),
        top1_agreement=float((theirs.argmax(-1) == ours.argmax(-1)).mean()),
        tokenization_match=list(llama_ids) == list(ids),
    )


__all__ = ["CHECK_TEXT", "GGUFCheck", "LlamaCppMissingError", "check_gguf", "llama_cpp_available", "require_llama_cpp"]

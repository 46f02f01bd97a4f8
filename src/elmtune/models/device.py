"""Device and precision policy, in one place: training and evaluation pick devices here.

``auto`` picks CUDA, then Apple MPS, then CPU. Precision ``auto`` means: bf16 autocast on CUDA where the GPU supports
it (otherwise fp16 with a gradient scaler); on MPS fp16 or bf16 autocast only where the installed torch and macOS
support it (otherwise fp32, with a one-line explanation); fp32 on CPU. Adapter parameters stay fp32 everywhere; the
frozen base weights may be stored in half precision to save memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from elmtune.errors import ElmtuneError, UsageError
from elmtune.models.dtypes import DTYPES

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class PrecisionPlan:
    """How a run computes.

    Attributes:
        device: Where the model runs.
        precision: The resolved precision: ``fp32``, ``bf16`` or ``fp16`` (autocast dtype when not fp32; fp16 also
            scales the loss).
        base_dtype: dtype of the frozen base weights (of the parts left unquantised with ``quantization``).
        quantization: ``nf4`` or ``int8`` when the base's Linear layers are quantised (QLoRA), else None.
        note: One line for the log saying what was chosen and why.
    """

    device: torch.device
    precision: Literal["fp32", "bf16", "fp16"]
    base_dtype: torch.dtype
    note: str
    quantization: Literal["nf4", "int8"] | None = None

    @property
    def accelerate_mixed_precision(self) -> str:
        """The ``mixed_precision`` value accelerate expects (it autocasts, and scales the loss under fp16)."""
        return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[self.precision]


def resolve_device(requested: str = "auto") -> torch.device:
    """The device for ``auto`` (cuda > mps > cpu) or an explicit name such as ``cuda:1``.

    Raises:
        ElmtuneError: An explicitly requested device is not available.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"--device {requested!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ElmtuneError(f"device {requested!r} requested but CUDA is not available; use --device cpu or auto")
    if device.type == "mps" and not mps_available():
        raise ElmtuneError(f"device {requested!r} requested but Apple MPS is not available; use --device cpu or auto")
    return device


def mps_available() -> bool:
    """Whether Apple's Metal backend can be used."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def mps_autocast_support() -> dict[str, bool]:
    """Which half dtypes MPS autocast supports with this torch and macOS: ``{"fp16": ..., "bf16": ...}``.

    fp16 autocast on MPS needs torch >= 2.5; bf16 also needs macOS 14 (Sonoma) or newer.
    """
    version = _torch_version()
    fp16 = version >= (2, 5)
    macos_14 = bool(getattr(torch.backends.mps, "is_macos_or_newer", lambda *_: False)(14, 0))
    return {"fp16": fp16, "bf16": fp16 and macos_14}


def plan_precision(device: torch.device, precision: Precision = "auto", base_dtype: str = "auto") -> PrecisionPlan:
    """Decide autocast dtype, loss scaling and base-weight dtype for ``device``.

    Args:
        device: The device the run uses (see :func:`resolve_device`).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        base_dtype: dtype of the frozen base weights: ``auto`` (fp32 on CPU, the compute dtype elsewhere), ``fp32``,
            ``bf16`` or ``fp16``; or ``nf4``/``int8``: the Linear layers quantised with bitsandbytes, computing in the
            compute dtype, which the rest of the base keeps.

    Returns:
        The plan.

    Raises:
        ElmtuneError: A precision the device cannot run (e.g. fp16 on CPU, bf16 on a GPU without bf16).
        ConfigError: ``nf4``/``int8`` without a bitsandbytes that can quantise on ``device``.
    """
    chosen, why = _compute_precision(device, precision)
    kind = device.type
    quantization = base_dtype if base_dtype in ("nf4", "int8") else None
    if quantization is not None:
        from elmtune.models.quantize import require_bitsandbytes

        require_bitsandbytes(quantization, device)
        base = torch.float32 if chosen == "fp32" else DTYPES[chosen]
        compute = str(base).removeprefix("torch.")
        note = f"{kind}: {chosen} compute ({why}); base Linear weights {quantization} computing in {compute}, rest "
        note += f"{compute}; adapters fp32"
        return PrecisionPlan(device=device, precision=chosen, base_dtype=base, note=note, quantization=quantization)
    if base_dtype == "auto":
        base = torch.float32 if kind == "cpu" or chosen == "fp32" else DTYPES[chosen]
    elif base_dtype in DTYPES:
        base = DTYPES[base_dtype]
    else:
        raise ElmtuneError(f"unknown base dtype {base_dtype!r}; use auto, fp32, bf16, fp16, nf4 or int8")
    note = f"{kind}: {chosen} compute ({why}); base weights {str(base).removeprefix('torch.')}; adapters fp32"
    return PrecisionPlan(device=device, precision=chosen, base_dtype=base, note=note)


def _compute_precision(device: torch.device, precision: Precision) -> tuple[Literal["fp32", "bf16", "fp16"], str]:
    """(compute precision, why) for ``device`` and the requested ``precision``."""
    kind = device.type
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if precision == "auto":
            chosen, why = (
                ("bf16", "CUDA with bf16 support") if bf16_ok else ("fp16", "CUDA without bf16: fp16 + scaler")
            )
        elif precision == "bf16" and not bf16_ok:
            raise ElmtuneError("this GPU does not support bf16; use --precision fp16 (with loss scaling) or fp32")
        else:
            chosen, why = precision, "requested"
    elif kind == "mps":
        support = mps_autocast_support()
        if precision == "auto":
            if support["bf16"]:
                chosen, why = "bf16", "MPS with bf16 autocast (torch >= 2.5, macOS >= 14)"
            elif support["fp16"]:
                chosen, why = "fp16", "MPS autocast supports fp16 only here (bf16 needs macOS 14)"
            else:
                chosen, why = "fp32", f"MPS autocast needs torch >= 2.5 (installed {torch.__version__}): using fp32"
        elif precision != "fp32" and not support[precision]:
            chosen = "fp32"
            why = f"{precision} autocast is not supported on MPS with torch {torch.__version__} here: using fp32"
        else:
            chosen, why = precision, "requested"
    else:
        if precision == "fp16":
            raise ElmtuneError("fp16 training is not supported on the CPU; use --precision bf16 or fp32")
        chosen = "fp32" if precision == "auto" else precision
        why = "CPU default" if precision == "auto" else "requested"
    return chosen, why

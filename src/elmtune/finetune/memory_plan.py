"""Peak memory and tokens per optimizer step of a training run, predicted from its configuration (``elmtune plan``).

The prediction adds, in bytes:

* **weights**: the frozen base in its dtype; a ``nf4`` base stores its Linear weights as 0.5 byte each plus one
  8-bit absmax per 64 weights (double quantisation: plus one fp32 per 256 blocks), an ``int8`` base as 1 byte each
  plus one fp32 scale per row; embeddings and norms stay in the compute dtype.
* **adapter**, **gradients**, **optimizer state**: the trainable parameters in fp32, their fp32 gradients and
  AdamW's two fp32 moments.
* **activations**: what autograd keeps per token and per decoder layer (see :func:`layer_activation_bytes`), times
  the layers; with gradient checkpointing only each layer's input, plus one layer recomputed in the backward pass.
* **logits**: the loss over the vocabulary at the positions it scores: the fp32 log-softmax autograd keeps, plus
  the larger of the logits with their fp32 copy (forward), the reference forward's (``dpo``) and the gradients of
  the log-softmax and the logits (backward); see :func:`logits_bytes`.
* **workspace**: the gradients of one layer's activations while the backward pass runs through it.
* **allocator** (CPU only): freed memory the C library's heap keeps instead of returning it (glibc serves tensors
  under its mmap threshold, up to 32 MiB, from a heap that the backward pass fragments); a share,
  :data:`CPU_ALLOCATOR_SHARE`, of the activations one step computes (without checkpointing: the volume that the
  forward pass, or a checkpointed run's recomputation, allocates and frees).
* **runtime**: the memory of the process before any tensor (CPU: Python, torch and the libraries,
  :data:`CPU_RUNTIME_BYTES`) or the CUDA context.

The two CPU constants are empirical (Linux x86-64, glibc, torch 2.x); the rest follows from the shapes.

Micro-batches are ``batch_size`` sequences (``dpo``: chosen and rejected, ``2 x batch_size``) of ``max_length``
tokens, every position scored (the worst case: prompt positions are not scored unless ``train_on_prompt``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from elmtune.errors import UsageError

if TYPE_CHECKING:
    from elmtune.finetune.config import RunConfig
    from elmtune.finetune.memory_counts import ParameterCounts
    from elmtune.models.geometry import LayerGeometry

GB = 10**9
CPU_RUNTIME_BYTES = 560 * 2**20
"""Resident memory of a CPU training process before the model: Python with torch, transformers, peft, datasets and
accelerate imported (measured as ``VmRSS`` right after those imports: 516 MiB on Linux x86-64 with torch 2.x), plus
allocator and thread-pool overhead of a running step."""
CPU_ALLOCATOR_SHARE = 0.2
"""Freed memory glibc's heap keeps at a CPU training step's peak, as a share of the step's activation volume (the
activations without gradient checkpointing). Measured on Linux x86-64 (glibc, torch 2.13) as the peak RSS of a run
with the default allocator minus that of the same run with every allocation mapped and unmapped on its own
(``MALLOC_MMAP_THRESHOLD_=131072``): 0.3-0.5 of the activation volume for 270M runs. The other components already
run above the tensors' own peak, so meeting the default peak took 0.07-0.35 on the 270M settings of
``benchmarks/plan_vs_measured.py``; 0.2 is the middle (see docs/training.md, Memory planning)."""
CUDA_CONTEXT_BYTES = 512 * 2**20
"""Device memory the CUDA context and kernels take outside torch's allocator."""
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
COMPONENTS = (
    "weights",
    "adapter",
    "gradients",
    "optimizer",
    "activations",
    "logits",
    "workspace",
    "allocator",
    "runtime",
)
"""The :class:`MemoryPlan` fields that add up to its total, in table order."""

_DEVICE = re.compile(r"^(cpu|cuda|mps)(?::(\d+(?:\.\d+)?)\s*(gb|gib|g)?)?$", re.IGNORECASE)


@dataclass(frozen=True)
class DeviceBudget:
    """The device a run is planned for and the memory it has.

    Attributes:
        kind: ``cpu``, ``cuda`` or ``mps``.
        total_bytes: Memory available to the run.
    """

    kind: str
    total_bytes: int

    def describe(self) -> str:
        """``cuda:24GB``-style label."""
        return f"{self.kind}:{self.total_bytes / GB:g}GB"


def machine_memory_bytes() -> int:
    """Total physical memory of this machine (``cpu`` without a size)."""
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse_device(spec: str) -> DeviceBudget:
    """``cuda:24GB``, ``mps:16GB``, ``cpu:32GB`` or ``cpu`` (this machine's memory) -> a :class:`DeviceBudget`.

    Raises:
        UsageError: Any other form, or a GPU without a size.
    """
    match = _DEVICE.match(spec.strip())
    if match is None or (match.group(1).lower() != "cpu" and match.group(2) is None):
        raise UsageError(f"--device {spec!r}: use cuda:24GB, mps:16GB, cpu:32GB or cpu (this machine's memory)")
    kind, size = match.group(1).lower(), match.group(2)
    total = machine_memory_bytes() if size is None else int(float(size) * GB)
    if total <= 0:
        raise UsageError(f"--device {spec!r}: the memory size must be positive")
    return DeviceBudget(kind=kind, total_bytes=total)


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted peak memory of one training run on one device (all sizes in bytes).

    Attributes:
        device: The device and its memory.
        precision: Compute precision (``fp32``, ``bf16``, ``fp16``).
        base_dtype: Dtype of the frozen base (``fp32``, ``bf16``, ``fp16``, ``nf4``, ``int8``).
        weights: The frozen base weights.
        adapter: The trainable parameters (fp32).
        gradients: Their fp32 gradients.
        optimizer: AdamW's two fp32 moments.
        activations: What the forward pass keeps for the backward pass.
        logits: The loss's vocabulary logits, log-softmax and their gradients.
        workspace: Gradients of one layer's activations during the backward pass.
        allocator: Freed memory the CPU's C library heap keeps (0 on CUDA and MPS).
        runtime: The process (CPU) or CUDA context before any tensor.
        tokens_per_step: Tokens of one optimizer step (micro-batch x max length x accumulation; ``dpo``: both
            sequences of every pair).
        sequences_per_micro_batch: Sequences of one forward pass.
        advice: What to change when it does not fit, each with its predicted total.
    """

    device: DeviceBudget
    precision: str
    base_dtype: str
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    workspace: int
    allocator: int
    runtime: int
    tokens_per_step: int
    sequences_per_micro_batch: int
    advice: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Predicted peak: the sum of the components."""
        return sum(size for _, size in self.components())

    @property
    def fits(self) -> bool:
        """Whether the predicted peak fits in the device's memory."""
        return self.total <= self.device.total_bytes

    def components(self) -> list[tuple[str, int]]:
        """(name, bytes) of every component, in table order."""
        return [(name, getattr(self, name)) for name in COMPONENTS]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready values (bytes), with the total and the verdict."""
        return {
            "device": self.device.describe(),
            "budget_bytes": self.device.total_bytes,
            "precision": self.precision,
            "base_dtype": self.base_dtype,
            **dict(self.components()),
            "total": self.total,
            "fits": self.fits,
            "tokens_per_step": self.tokens_per_step,
            "sequences_per_micro_batch": self.sequences_per_micro_batch,
            "advice": list(self.advice),
        }


def resolved_precision(config: RunConfig, device: DeviceBudget) -> tuple[str, str]:
    """(compute precision, base dtype) the run would use on ``device`` (``auto`` resolved as training does)."""
    precision = config.train.precision
    if precision == "auto":
        precision = "fp32" if device.kind == "cpu" else "bf16"
    base = config.train.base_dtype
    if base == "auto":
        base = "fp32" if device.kind == "cpu" else precision
    return precision, base


def weight_bytes(counts: ParameterCounts, base_dtype: str, compute_bytes: int) -> int:
    """Bytes of the frozen base: full precision, or quantised Linear layers with the rest in the compute dtype."""
    if base_dtype in DTYPE_BYTES:
        return counts.base * DTYPE_BYTES[base_dtype]
    rest = (counts.base - counts.quantizable) * compute_bytes
    if base_dtype == "nf4":
        blocks = -(-counts.quantizable // 64)
        return rest + counts.quantizable // 2 + blocks + 4 * -(-blocks // 256)
    return rest + counts.quantizable + 4 * counts.quantizable_rows  # int8


def layer_activation_bytes(
    layer: LayerGeometry,
    counts: ParameterCounts,
    act_bytes: int,
    config: RunConfig,
    *,
    autocast: bool = False,
    repeated_kv: bool = False,
) -> int:
    """Bytes autograd keeps per token for one decoder layer (``autocast``: bf16/fp16 mixed precision is on).

    The two RMSNorms keep their fp32 inputs (4 d each), the q/k norms their fp32 queries and keys; attention keeps
    q, k, v and its output plus one fp32 log-sum-exp per head (with ``repeated_kv``, k and v repeated to the query
    heads: see :func:`elmtune.models.layers.sdpa_expands_kv`); the GLU feed-forward keeps ``proj_1``'s output (2 f),
    the activation (f). Every adapted input is kept for its LoRA A (once when the compute is fp32 and the targets
    share it; otherwise one copy per target: in fp32 on a bf16/fp16 base without autocast, as the fp32 adapter casts
    it, in the autocast dtype under autocast, which casts it back for the matmul), with dropout's output and mask,
    the A outputs (the ranks) and, for DoRA, the rescaled outputs.
    """
    d, q, kv, f = layer.model_dim, layer.q_rows, layer.kv_rows, layer.ffn_dim
    kept = 4 * 2 * d + (4 * (q + kv) if layer.normalize_qk else 0)
    kept += act_bytes * (q + 2 * (q if repeated_kv else kv)) + act_bytes * q + 4 * layer.num_query_heads
    kept += act_bytes * (3 * f if layer.ffn_with_glu else f)
    dropout = config.adapter.dropout > 0
    for adapted in counts.inputs.get(layer.index, ()):
        copies = 1 if act_bytes == 4 else adapted.targets
        width = adapted.in_features
        kept += copies * (act_bytes if autocast else 4) * width + (adapted.targets * (4 + 1) * width if dropout else 0)
        kept += 4 * adapted.rank_sum
        if config.adapter.method == "dora":
            kept += act_bytes * adapted.out_sum
    return kept


def logits_bytes(vocab: int, act_bytes: int, dpo: bool, z_loss: bool = False) -> int:
    """Bytes per scored token of the loss over the vocabulary, at its peak.

    The log-softmax (fp32) is what autograd keeps (plus the fp32 logits with a z-loss, whose log-sum-exp keeps its
    input); the logits and their fp32 copy live only while the loss is computed (so does a ``dpo`` reference
    forward's), and the backward pass holds the gradients of the log-softmax and of the logits.
    """
    upcast = 4 if act_bytes != 4 else 0
    kept = vocab * (4 + (4 if z_loss else 0))
    forward = vocab * (act_bytes + upcast)  # logits and their fp32 copy, freed once the loss is computed
    reference = vocab * (act_bytes + upcast + 4) if dpo else 0  # the reference forward, no gradients
    backward = vocab * (4 + 4 + (act_bytes if upcast else 0))  # gradients of the log-softmax and of the logits
    return kept + max(forward, reference, backward)


def attention_repeats_kv(kind: str, dtype: str, head_dim: int, masked: bool) -> bool:
    """Whether the model's attention would repeat grouped K/V heads on a ``kind`` device (the model's own rule).

    The model asks torch's kernel choice (:func:`elmtune.models.layers.sdpa_expands_kv`), so the plan asks it too
    where this machine has the device (the CPU; CUDA when present). A device it lacks is planned with the rule's
    fallback: MPS always repeats, CUDA repeats under a mask.

    Args:
        kind: ``cpu``, ``cuda`` or ``mps``.
        dtype: The attention's dtype (``fp32``, ``bf16``, ``fp16``).
        head_dim: The head size.
        masked: Whether the rows attend under an explicit mask.
    """
    import torch

    from elmtune.models.dtypes import DTYPES
    from elmtune.models.layers import sdpa_expands_kv

    present = kind != "cuda" or torch.cuda.is_available()  # MPS is decided without asking torch
    device = torch.device(kind if present else "meta")
    return sdpa_expands_kv(device, DTYPES[dtype], head_dim, masked)


def plan_memory(config: RunConfig, device: DeviceBudget, counts: ParameterCounts) -> MemoryPlan:
    """Predict the peak memory of ``config`` on ``device`` (no advice; see :func:`plan_with_advice`).

    Args:
        config: The run configuration (the train flags and recipe of ``elmtune train``).
        device: The device and its memory.
        counts: The model's parameter counts (:func:`~elmtune.finetune.memory_counts.count_parameters`).

    Returns:
        The plan.
    """
    precision, base_dtype = resolved_precision(config, device)
    # a bf16/fp16 base computes in its own dtype even without autocast; a quantised one in the compute dtype
    act_bytes = min(DTYPE_BYTES[precision], DTYPE_BYTES.get(base_dtype, 4))
    train = config.train
    dpo = train.objective == "dpo"
    sequences = train.batch_size * (2 if dpo else 1)
    tokens = sequences * config.data.max_length  # (N x L) positions of one forward pass
    geometry = counts.geometry
    autocast = precision != "fp32"
    head_dim = geometry.layers[0].head_dim if geometry.layers else 0
    attention_dtype = precision if DTYPE_BYTES[precision] == act_bytes else base_dtype
    # padded rows, packs and preference pairs attend under a mask; padding-free rows attend causally
    masked = dpo or not config.data.padding_free
    repeated_kv = bool(geometry.layers) and attention_repeats_kv(device.kind, attention_dtype, head_dim, masked)
    per_layer = [
        layer_activation_bytes(layer, counts, act_bytes, config, autocast=autocast, repeated_kv=repeated_kv)
        for layer in geometry.layers
    ]
    residual = act_bytes * geometry.model_dim  # a layer's input, per token
    shared = residual + 4 * geometry.model_dim + 2 * 4 * head_dim  # embedding output, final norm, rotary tables
    volume = tokens * (sum(per_layer) + shared)  # every activation one step computes and frees
    if train.gradient_checkpointing:
        activations = tokens * (len(per_layer) * residual + max(per_layer, default=0) + shared)
    else:
        activations = volume
    on_the_fly = dpo and not train.precompute_reference
    logits = tokens * logits_bytes(geometry.vocab_size, act_bytes, dpo=on_the_fly, z_loss=train.z_loss > 0)
    trainable = counts.trainable
    return MemoryPlan(
        device=device,
        precision=precision,
        base_dtype=base_dtype,
        weights=weight_bytes(counts, base_dtype, act_bytes),
        adapter=4 * trainable,
        gradients=4 * trainable,
        optimizer=8 * trainable,
        activations=activations,
        logits=logits,
        workspace=tokens * max(per_layer, default=0),
        allocator=round(CPU_ALLOCATOR_SHARE * volume) if device.kind == "cpu" else 0,
        runtime=CPU_RUNTIME_BYTES if device.kind == "cpu" else CUDA_CONTEXT_BYTES if device.kind == "cuda" else 0,
        tokens_per_step=tokens * train.grad_accum,
        sequences_per_micro_batch=sequences,
    )


__all__ = [
    "CPU_ALLOCATOR_SHARE",
    "CPU_RUNTIME_BYTES",
    "CUDA_CONTEXT_BYTES",
    "DeviceBudget",
    "MemoryPlan",
    "layer_activation_bytes",
    "logits_bytes",
    "machine_memory_bytes",
    "parse_device",
    "plan_memory",
    "resolved_precision",
    "weight_bytes",
]

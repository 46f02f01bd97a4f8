"""A saved adapter, read once and parsed once into typed per-target updates in Apple's key layout.

:func:`read_adapter` reads an adapter directory into an :class:`AdapterCheckpoint` (peft tensors and config as they
are saved). :func:`parse_adapter` turns it into a :class:`ParsedAdapter`: one :class:`AdapterTarget` per adapted
module, naming the base tensor it updates (``...qkv_proj.weight`` for the sub-projection ``...qkv_proj.q``, with the
row block the sub-projection covers), its fp32 factors ``A`` and ``B``, its scale ``s`` (``alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA) and its DoRA magnitude; plus the full tensors the adapter replaces outright (trained
norms). Merging, checking and combining all read this one structure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elmtune.adapters.adapter_dir import PEFT_KEY_PREFIX
from elmtune.adapters.config import AdapterError

EMBEDDING_KEY = "transformer.token_embeddings.weight"
"""OpenELM's token embedding (also the output head while the head is tied)."""

_PARTS = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_embedding_A": "A",
    ".lora_embedding_B": "B",
    ".lora_magnitude_vector": "magnitude",
}
_EMBEDDING_SUFFIXES = (".lora_embedding_A", ".lora_embedding_B")


@dataclass(frozen=True)
class AdapterCheckpoint:
    """A saved adapter as plain data: peft tensors, peft config and elmtune metadata (None for plain peft)."""

    tensors: Mapping[str, torch.Tensor]
    peft_config: Mapping[str, Any]
    metadata: Mapping[str, Any] | None = None


def read_adapter(adapter_dir: str | Path) -> AdapterCheckpoint:
    """Read an adapter directory (safetensors only) into an :class:`AdapterCheckpoint`.

    Raises:
        AdapterError: Missing files or a pickle checkpoint.
    """
    from elmtune.adapters.adapter_dir import CONFIG_FILE, WEIGHTS_FILE, check_adapter_dir, read_metadata
    from elmtune.models.checkpoint_files import read_safetensors

    path = check_adapter_dir(adapter_dir)
    return AdapterCheckpoint(
        tensors=read_safetensors(path / WEIGHTS_FILE),
        peft_config=json.loads((path / CONFIG_FILE).read_text()),
        metadata=read_metadata(path),
    )


@dataclass(frozen=True)
class AdapterTarget:
    """The low-rank update of one adapted module, placed in Apple's key layout.

    Attributes:
        module: The module's name in the adapter (``...qkv_proj.q`` for a sub-projection).
        key: The base tensor it updates, e.g. ``transformer.layers.0.attn.qkv_proj.weight``.
        rows: ``(start, stop)`` rows of ``key`` it covers (a sub-projection of a fused weight), or None for all.
        a: fp32 ``A``, (r, in); for an embedding (r, vocab).
        b: fp32 ``B``, (out, r); for an embedding (d, r).
        scale: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), patterns applied.
        magnitude: fp32 DoRA magnitude: (out,) per output row of a Linear, (d,) per embedding dimension of an
            embedding; None for LoRA (and for an embedding whose DoRA elmtune trains as LoRA).
        embedding: Whether the module is an embedding (update ``(B·A)ᵀ``, vocab x d).
    """

    module: str
    key: str
    rows: tuple[int, int] | None
    a: torch.Tensor
    b: torch.Tensor
    scale: float
    magnitude: torch.Tensor | None
    embedding: bool

    @property
    def rank(self) -> int:
        """The rank ``r`` (rows of ``A``)."""
        return self.a.shape[0]

    def update_shape(self, fan_in_fan_out: bool) -> tuple[int, int]:
        """Shape of the update in the base tensor's layout: (vocab, d) for an embedding, (out, in) otherwise."""
        if self.embedding:
            return self.a.shape[1], self.b.shape[0]  # A (r, vocab), B (d, r)
        out_features, in_features = self.b.shape[0], self.a.shape[1]  # A (r, in), B (out, r)
        return (in_features, out_features) if fan_in_fan_out else (out_features, in_features)


@dataclass(frozen=True)
class ParsedAdapter:
    """An adapter as typed updates (see the module docstring).

    Attributes:
        checkpoint: The adapter as saved (its peft config and metadata feed reports and checks).
        targets: One update per adapted module, in the adapter's order.
        replaced: Base key -> tensor the adapter replaces outright (trained norms, ``train_norms``), as saved.
        fan_in_fan_out: Whether Linear weights are stored transposed (GPT-2 style Conv1D).
        dora: Whether any module carries a DoRA magnitude.
    """

    checkpoint: AdapterCheckpoint
    targets: tuple[AdapterTarget, ...]
    replaced: Mapping[str, torch.Tensor]
    fan_in_fan_out: bool
    dora: bool

    @property
    def adapted_keys(self) -> frozenset[str]:
        """Base keys that receive a low-rank update."""
        return frozenset(target.key for target in self.targets)

    @property
    def touches_embedding(self) -> bool:
        """Whether the token embedding is adapted."""
        return EMBEDDING_KEY in self.adapted_keys

    def targets_of(self, key: str) -> list[AdapterTarget]:
        """The updates of base tensor ``key`` (several for a fused weight with sub-projections)."""
        return [target for target in self.targets if target.key == key]


def _lora_scale(peft_config: Mapping[str, Any], module: str, rank: int) -> float:
    """The scaling peft gives ``module``: ``alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA), ``alpha_pattern`` applied."""
    alpha = peft_config["lora_alpha"]
    alpha_pattern = peft_config.get("alpha_pattern") or {}
    if alpha_pattern:  # peft's own pattern matching (importing peft costs seconds; most adapters have no pattern)
        from peft.utils.other import get_pattern_key

        alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), alpha)
    return alpha / math.sqrt(rank) if peft_config.get("use_rslora") else alpha / rank


def _locate(module: str, metadata: Mapping[str, Any] | None) -> tuple[str, tuple[int, int] | None]:
    """Adapter module name -> (base key, rows) in Apple's fused layout (rows from the metadata's ``row_blocks``)."""
    row_blocks = (metadata or {}).get("row_blocks", {})
    parent, _, block = module.rpartition(".")
    if parent in row_blocks and block in row_blocks[parent]:
        start, stop = row_blocks[parent][block]
        return f"{parent}.weight", (int(start), int(stop))
    return f"{module}.weight", None


def _group(
    checkpoint: AdapterCheckpoint,
) -> tuple[dict[str, dict[str, torch.Tensor]], set[str], dict[str, torch.Tensor]]:
    """Saved peft keys -> ({module: {"A"|"B"|"magnitude": tensor}}, embedding modules, full-tensor replacements)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    embeddings: set[str] = set()
    replaced: dict[str, torch.Tensor] = {}
    for key, tensor in checkpoint.tensors.items():
        name = key.removeprefix(PEFT_KEY_PREFIX)
        for suffix, part in _PARTS.items():
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                modules.setdefault(module, {})[part] = tensor
                if suffix in _EMBEDDING_SUFFIXES:
                    embeddings.add(module)
                break
        else:
            if "lora_" in name:
                raise AdapterError(f"cannot merge adapter tensor {key}: unsupported (e.g. lora_bias)")
            replaced[name] = tensor
    return modules, embeddings, replaced


def parse_adapter(checkpoint: AdapterCheckpoint) -> ParsedAdapter:
    """Parse a saved adapter into typed updates (see the module docstring).

    Raises:
        AdapterError: A tensor elmtune cannot merge (e.g. ``lora_bias``) or a module without its A or B factor.
    """
    config = checkpoint.peft_config
    as_lora = set((checkpoint.metadata or {}).get("dora_embedding_as_lora", []))
    modules, embeddings, replaced = _group(checkpoint)
    targets = []
    for module, parts in modules.items():
        if "A" not in parts or "B" not in parts:
            raise AdapterError(f"adapter module {module} lacks its lora_A or lora_B tensor; the adapter is incomplete")
        key, rows = _locate(module, checkpoint.metadata)
        a, b = parts["A"].float(), parts["B"].float()  # (r, in), (out, r); embedding (r, vocab), (d, r)
        embedding = module in embeddings
        magnitude = parts.get("magnitude")
        if embedding and module in as_lora:
            magnitude = None  # peft's DoRA embedding trained as LoRA; the magnitude is saved for plain peft only
        targets.append(
            AdapterTarget(
                module=module,
                key=key,
                rows=rows,
                a=a,
                b=b,
                scale=_lora_scale(config, module, a.shape[0]),
                magnitude=None if magnitude is None else magnitude.float(),
                embedding=embedding,
            )
        )
    return ParsedAdapter(
        checkpoint=checkpoint,
        targets=tuple(targets),
        replaced=replaced,
        fan_in_fan_out=bool(config.get("fan_in_fan_out")),
        dora=any("magnitude" in parts for parts in modules.values()),
    )


__all__ = [
    "EMBEDDING_KEY",
    "AdapterCheckpoint",
    "AdapterTarget",
    "ParsedAdapter",
    "parse_adapter",
    "read_adapter",
]

"""Merge an adapter into a base checkpoint one tensor at a time, from any :class:`TensorSource`.

For every base key, in Apple's order: read the base tensor, ask :func:`elmtune.adapters.merge.adapter_deltas` for
the fp32 updates of that key only, add them in fp32 and round once to the output dtype; tensors and rows the adapter
does not touch are only cast (bit-identical when the dtype stays). Nothing but the current tensor, its fp32 copy and
its update is alive at a time, so the same code serves the in-memory merge (a loaded model's state dict) and the
low-memory merge (the base safetensors files): their outputs are bit-identical by construction.

With an untied output (``untie=True`` on a tied base) ``lm_head.weight`` is appended: the base embedding, cast to
the output dtype, so the merged model's head is exactly the one the unmerged adapter uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from elmtune.adapters.config import AdapterError
from elmtune.adapters.merge import AdapterCheckpoint, _group_modules, _locate, adapter_deltas
from elmtune.adapters.tensor_files import TensorSource, TensorSpec

EMBEDDING_KEY = "transformer.token_embeddings.weight"
HEAD_KEY = "lm_head.weight"


@dataclass(frozen=True)
class AdapterLayout:
    """Where an adapter lands in the base checkpoint.

    Attributes:
        adapted_keys: Base keys that receive a low-rank update.
        replaced_keys: Base keys the adapter replaces outright (trained norms).
        touches_embedding: Whether the token embedding is adapted.
        dora: Whether any module carries a DoRA magnitude.
    """

    adapted_keys: frozenset[str]
    replaced_keys: frozenset[str]
    touches_embedding: bool
    dora: bool


def adapter_layout(checkpoint: AdapterCheckpoint) -> AdapterLayout:
    """The base keys an adapter changes (see :class:`AdapterLayout`)."""
    modules, replaced = _group_modules(checkpoint)
    keys = {_locate(module, checkpoint.metadata)[0] for module in modules}
    return AdapterLayout(
        adapted_keys=frozenset(keys),
        replaced_keys=frozenset(replaced),
        touches_embedding=EMBEDDING_KEY in keys,
        dora=any("m" in parts for parts in modules.values()),
    )


def output_specs(
    source: TensorSource, keys: Sequence[str], dtype: torch.dtype, *, untie: bool = False
) -> list[TensorSpec]:
    """The merged checkpoint's tensors: ``keys`` (Apple's order) in ``dtype``, plus ``lm_head.weight`` when untying.

    Raises:
        AdapterError: The base lacks one of ``keys`` or holds tensors the model does not have.
    """
    available = set(source.keys())
    missing = [k for k in keys if k not in available]
    if missing:
        raise AdapterError(f"the base checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    extra = sorted(available - set(keys))
    if extra:
        raise AdapterError(f"the base checkpoint holds tensor(s) OpenELM does not have: {', '.join(extra[:3])}")
    specs = [TensorSpec(key, source.shape(key), dtype) for key in keys]
    if untie and HEAD_KEY not in keys:
        specs.append(TensorSpec(HEAD_KEY, source.shape(EMBEDDING_KEY), dtype))
    return specs


def _update_shape(parts: dict[str, torch.Tensor], module: str, fan_in_fan_out: bool) -> tuple[int, int]:
    """Shape of a module's update in the base tensor's layout: (vocab, d) for an embedding, (out, in) otherwise."""
    if "emb_A" in parts and "emb_B" in parts:
        return parts["emb_A"].shape[1], parts["emb_B"].shape[0]  # A (r, vocab), B (d, r)
    if "A" in parts and "B" in parts:
        out_features, in_features = parts["B"].shape[0], parts["A"].shape[1]  # A (r, in), B (out, r)
        return (in_features, out_features) if fan_in_fan_out else (out_features, in_features)
    raise AdapterError(f"adapter module {module} lacks its lora_A or lora_B tensor; the adapter is incomplete")


def check_adapter_fits(source: TensorSource, checkpoint: AdapterCheckpoint, adapter_name: str) -> None:
    """Refuse an adapter that does not fit the base, before anything is merged or written.

    The streaming merge visits the base's keys only, so an adapter module without a base tensor would otherwise be
    dropped silently (and still be reported as changed). Modules are checked in sorted order; the first problem is
    the error.

    Args:
        source: The base checkpoint.
        checkpoint: The adapter.
        adapter_name: How to name the adapter in messages (its directory).

    Raises:
        AdapterError: A module or trained norm the base lacks, or an update whose shape differs from its tensor.
    """
    shapes = {key: tuple(source.shape(key)) for key in source.keys()}
    modules, replaced = _group_modules(checkpoint)
    fan_in_fan_out = bool(checkpoint.peft_config.get("fan_in_fan_out"))
    for module in sorted(modules):
        key, rows = _locate(module, checkpoint.metadata)
        if key not in shapes:
            raise AdapterError(
                f"adapter {adapter_name} adapts module {module}, which the base model does not have (no tensor "
                f"{key}); merge it into the model it was trained on"
            )
        shape = shapes[key]
        if rows is not None and not 0 <= rows[0] < rows[1] <= shape[0]:
            raise AdapterError(
                f"adapter {adapter_name}: module {module} covers rows {list(rows)}, outside {key} {list(shape)}"
            )
        target = shape if rows is None else (rows[1] - rows[0], *shape[1:])
        update = _update_shape(modules[module], module, fan_in_fan_out)
        if tuple(update) != tuple(target):
            raise AdapterError(
                f"adapter {adapter_name}: module {module} has an update of shape {list(update)}, but the base's "
                f"{key}{'' if rows is None else f' rows {rows[0]}:{rows[1]}'} has shape {list(target)}"
            )
    for key in sorted(replaced):
        if key not in shapes:
            raise AdapterError(
                f"adapter {adapter_name} replaces tensor {key}, which the base model does not have; merge it into "
                "the model it was trained on"
            )
        if tuple(replaced[key].shape) != shapes[key]:
            raise AdapterError(
                f"adapter {adapter_name}: tensor {key} has shape {list(replaced[key].shape)}, the base's has "
                f"{list(shapes[key])}"
            )


@torch.no_grad()
def merge_tensor(source: TensorSource, checkpoint: AdapterCheckpoint, key: str, dtype: torch.dtype) -> torch.Tensor:
    """The merged value of one base tensor, rounded once to ``dtype``.

    Adapted rows are ``round(fp32(W) + fp32 update)``; other rows and tensors are ``W`` cast to ``dtype``; a trained
    norm saved with the adapter replaces the base tensor (cast to ``dtype``).
    """
    _, replaced = _group_modules(checkpoint)
    if key in replaced:
        if tuple(replaced[key].shape) != source.shape(key):
            raise AdapterError(f"adapter tensor {key} has shape {list(replaced[key].shape)}, the base has another")
        return replaced[key].to(dtype)
    base = source.get(key)
    deltas = adapter_deltas({key: base}, checkpoint, keys={key})
    merged = base.to(dtype, copy=bool(deltas))  # a copy only when rows are written into it
    for delta in deltas:
        if delta.rows is None:
            merged = (base.float() + delta.delta).to(dtype)
        else:
            start, stop = delta.rows
            merged[start:stop] = (base[start:stop].float() + delta.delta).to(dtype)
    return merged


def merged_tensors(
    source: TensorSource, checkpoint: AdapterCheckpoint, specs: Sequence[TensorSpec]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, merged tensor)`` for every spec of :func:`output_specs`, one at a time.

    ``lm_head.weight`` (untied output) is the base embedding cast to the output dtype.
    """
    for spec in specs:
        if spec.key == HEAD_KEY and HEAD_KEY not in source.keys():
            yield spec.key, source.get(EMBEDDING_KEY).to(spec.dtype, copy=True)
        else:
            yield spec.key, merge_tensor(source, checkpoint, spec.key, spec.dtype)


__all__ = [
    "EMBEDDING_KEY",
    "HEAD_KEY",
    "AdapterLayout",
    "adapter_layout",
    "check_adapter_fits",
    "merge_tensor",
    "merged_tensors",
    "output_specs",
]

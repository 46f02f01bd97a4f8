"""The merge: an adapter's updates added to a base checkpoint one tensor at a time, from any :class:`TensorSource`.

For every base key, in Apple's order: read the base tensor, compute the fp32 updates of that key's targets
(:func:`target_delta`), add them in fp32 and round once to the output dtype; tensors and rows the adapter does not
touch are only cast (bit-identical when the dtype stays). Nothing but the current tensor, its fp32 copy and its update
is alive at a time. The in-memory merge (a loaded model's state dict, :class:`StateDictSource`) and the low-memory
merge (the base safetensors files) are this one implementation over two sources: their outputs are bit-identical.

Math, per target with scale ``s`` (``alpha / r``, ``alpha / sqrt(r)`` with rsLoRA):

* LoRA Linear: ``W' = W + s·B·A``; LoRA Embedding: ``W' = W + s·(B·A)ᵀ``.
* DoRA Linear: ``W' = m / ||W + s·B·A||_row * (W + s·B·A)`` (magnitude per output row); DoRA Embedding (peft's):
  ``W' = (W + s·(B·A)ᵀ) * m / ||W + s·(B·A)ᵀ||_col`` (magnitude per embedding dimension).

Sub-projection targets (``qkv_proj.q``...) land on their rows of the fused weight; every other row is only cast.
With an untied output (``untie=True`` on a tied base) ``lm_head.weight`` is appended: the base embedding, cast to
the output dtype, so the merged model's head is exactly the one the unmerged adapter uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from elmtune.adapters.config import AdapterError
from elmtune.merging.adapter import EMBEDDING_KEY, AdapterTarget, ParsedAdapter
from elmtune.merging.safetensors_writer import TensorSpec
from elmtune.merging.sources import TensorSource

HEAD_KEY = "lm_head.weight"


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


def _check_target(shapes: dict[str, tuple[int, ...]], target: AdapterTarget, fan_in_fan_out: bool, name: str) -> None:
    key, rows, module = target.key, target.rows, target.module
    if key not in shapes:
        raise AdapterError(
            f"adapter {name} adapts module {module}, which the base model does not have (no tensor "
            f"{key}); merge it into the model it was trained on"
        )
    shape = shapes[key]
    if rows is not None and not 0 <= rows[0] < rows[1] <= shape[0]:
        raise AdapterError(f"adapter {name}: module {module} covers rows {list(rows)}, outside {key} {list(shape)}")
    expected = shape if rows is None else (rows[1] - rows[0], *shape[1:])
    update = target.update_shape(fan_in_fan_out)
    if tuple(update) != tuple(expected):
        raise AdapterError(
            f"adapter {name}: module {module} has an update of shape {list(update)}, but the base's "
            f"{key}{'' if rows is None else f' rows {rows[0]}:{rows[1]}'} has shape {list(expected)}"
        )


def check_adapter_fits(source: TensorSource, adapter: ParsedAdapter, adapter_name: str) -> None:
    """Refuse an adapter that does not fit the base, before anything is merged or written.

    The merge visits the base's keys only, so a target without a base tensor would otherwise be dropped silently (and
    still be reported as changed). Targets are checked in sorted order; the first problem is the error.

    Args:
        source: The base checkpoint.
        adapter: The parsed adapter.
        adapter_name: How to name the adapter in messages (its directory).

    Raises:
        AdapterError: A module or trained norm the base lacks, or an update whose shape differs from its tensor.
    """
    shapes = {key: tuple(source.shape(key)) for key in source.keys()}
    for target in sorted(adapter.targets, key=lambda t: t.module):
        _check_target(shapes, target, adapter.fan_in_fan_out, adapter_name)
    for key in sorted(adapter.replaced):
        if key not in shapes:
            raise AdapterError(
                f"adapter {adapter_name} replaces tensor {key}, which the base model does not have; merge it into "
                "the model it was trained on"
            )
        if tuple(adapter.replaced[key].shape) != shapes[key]:
            raise AdapterError(
                f"adapter {adapter_name}: tensor {key} has shape {list(adapter.replaced[key].shape)}, the base's has "
                f"{list(shapes[key])}"
            )


@torch.no_grad()
def target_delta(target: AdapterTarget, base: torch.Tensor, fan_in_fan_out: bool = False) -> torch.Tensor:
    """The fp32 update of one target: merged minus base, in the base tensor's layout (its rows for a sub-projection).

    Args:
        target: The adapted module.
        base: The base tensor it updates (only its rows for a sub-projection); any dtype.
        fan_in_fan_out: Linear weights are stored transposed (GPT-2 style Conv1D).

    Raises:
        AdapterError: An update whose shape differs from ``base``.
    """
    a, b = target.a, target.b  # fp32 (r, in) and (out, r); embedding (r, vocab) and (d, r)
    if target.embedding:
        weight = base.float()  # (vocab, d)
        merged = weight + target.scale * (b @ a).T  # (vocab, d)
        if target.magnitude is not None:  # peft's DoRA embedding: magnitude per embedding dimension (column)
            merged = merged * (target.magnitude / merged.norm(dim=0))[None, :]
        delta = merged - weight
    else:
        weight = base.float().T if fan_in_fan_out else base.float()  # (out, in)
        merged = weight + target.scale * (b @ a)  # (out, in)
        if target.magnitude is not None:  # DoRA: magnitude per output row
            merged = (target.magnitude / merged.norm(dim=1))[:, None] * merged
        delta = merged - weight
        delta = delta.T if fan_in_fan_out else delta
    if delta.shape != base.shape:
        raise AdapterError(f"adapter module {target.module}: update {tuple(delta.shape)} vs base {tuple(base.shape)}")
    return delta.contiguous()


CHUNK_BYTES = 2**20
"""fp32 bytes of base rows merged at a time: the update of a large tensor (the embedding) is never whole."""


def _rows_chunkable(target: AdapterTarget, fan_in_fan_out: bool) -> bool:
    """Whether rows of ``target``'s block merge independently (DoRA norms across rows need the whole block)."""
    across_rows = target.embedding or fan_in_fan_out  # the base's rows are A's columns; DoRA normalises columns
    return target.magnitude is None or not across_rows


def _target_rows(target: AdapterTarget, start: int, stop: int, fan_in_fan_out: bool) -> AdapterTarget:
    """The part of ``target`` that updates rows ``start:stop`` of its block (in the base tensor's layout)."""
    if target.embedding or fan_in_fan_out:  # update (B·A)ᵀ: the block's rows are A's columns
        return replace(target, a=target.a[:, start:stop])
    magnitude = None if target.magnitude is None else target.magnitude[start:stop]
    return replace(target, b=target.b[start:stop], magnitude=magnitude)


@torch.no_grad()
def merge_tensor(
    source: TensorSource, adapter: ParsedAdapter, key: str, dtype: torch.dtype, chunk_bytes: int | None = None
) -> torch.Tensor:
    """The merged value of one base tensor, rounded once to ``dtype``.

    Adapted rows are ``round(fp32(W) + fp32 update)``; other rows and tensors are ``W`` cast to ``dtype``; a trained
    norm saved with the adapter replaces the base tensor (cast to ``dtype``). Rows are merged ``chunk_bytes`` of fp32
    at a time (default :data:`CHUNK_BYTES`), into the tensor the source handed out when it is a private copy already in
    ``dtype``.

    Raises:
        AdapterError: A replacement or an update whose shape differs from the base tensor.
    """
    if key in adapter.replaced:
        replacement = adapter.replaced[key]
        if tuple(replacement.shape) != source.shape(key):
            raise AdapterError(f"adapter tensor {key} has shape {list(replacement.shape)}, the base has another")
        return replacement.to(dtype)
    base = source.get(key)
    targets = adapter.targets_of(key)
    if not targets:
        return base.to(dtype)
    in_place = source.hands_out_copies and base.dtype == dtype
    merged = base if in_place else base.to(dtype, copy=True)  # (rows, ...) written block by block
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    row_bytes = 4 * max(1, math.prod(base.shape[1:]))  # fp32 bytes of one row
    for target in targets:
        start, stop = target.rows if target.rows is not None else (0, base.shape[0])
        whole = stop - start
        step = max(1, chunk_bytes // row_bytes if _rows_chunkable(target, adapter.fan_in_fan_out) else whole)
        for first in range(0, whole, step):
            last = min(first + step, whole)
            part = _target_rows(target, first, last, adapter.fan_in_fan_out) if step < whole else target
            rows = base[start + first : start + last]  # (chunk, ...): read before it is overwritten
            update = target_delta(part, rows, adapter.fan_in_fan_out)  # fp32 (chunk, ...)
            merged[start + first : start + last] = (rows.float() + update).to(dtype)
    return merged


def merged_tensors(
    source: TensorSource, adapter: ParsedAdapter, specs: Sequence[TensorSpec]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, merged tensor)`` for every spec of :func:`output_specs`, one at a time.

    ``lm_head.weight`` (untied output) is the base embedding cast to the output dtype.
    """
    for spec in specs:
        if spec.key == HEAD_KEY and HEAD_KEY not in source.keys():
            yield spec.key, source.get(EMBEDDING_KEY).to(spec.dtype, copy=True)
        else:
            yield spec.key, merge_tensor(source, adapter, spec.key, spec.dtype)


__all__ = [
    "CHUNK_BYTES",
    "HEAD_KEY",
    "check_adapter_fits",
    "merge_tensor",
    "merged_tensors",
    "output_specs",
    "target_delta",
]

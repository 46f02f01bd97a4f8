"""Sub-projections of OpenELM's fused matrices: split a fused Linear into row blocks, and fuse it back exactly.

``qkv_proj`` holds the rows Q | K | V and ``proj_1`` the rows gate | up. To adapt only some of them (the classic
"q,v" LoRA), the fused Linear is replaced by a :class:`RowSplitLinear` whose children (``qkv_proj.q``,
``qkv_proj.k``, ``qkv_proj.v``) are Linear modules of the fused one's class holding copies of its rows; its output
is the concatenation of the children's outputs, i.e. the fused output. peft then targets the chosen children as
ordinary Linears, so only their rows get an adapter. :func:`fuse_split_modules` turns every split module back into
one Linear whose weight is the row concatenation of the children (bit-exact), i.e. Apple's key layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from elmtune.models.linear import OpenELMLinear


class RowSplitLinear(nn.Module):
    """A Linear split into contiguous row blocks; ``forward`` concatenates the blocks' outputs in order.

    Args:
        blocks: Block name -> Linear, in row order (all with the same ``in_features``).
    """

    def __init__(self, blocks: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.block_names = tuple(blocks)
        for name, module in blocks.items():
            self.add_module(name, module)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: Mapping[str, tuple[int, int]]) -> RowSplitLinear:
        """Split ``linear`` into blocks of rows (exact copies; the fused weight is released with ``linear``).

        Args:
            linear: The fused Linear.
            rows: Block name -> (start, stop); the blocks must tile ``[0, out_features)`` in order.

        Raises:
            ValueError: If the blocks do not tile the rows.
        """
        expected = 0
        for name, (start, stop) in rows.items():
            if start != expected or stop <= start:
                raise ValueError(f"block {name} rows {start}:{stop} do not continue at row {expected}")
            expected = stop
        if expected != linear.out_features:
            raise ValueError(f"blocks cover {expected} rows, the Linear has {linear.out_features}")
        kind = OpenELMLinear if isinstance(linear, OpenELMLinear) else nn.Linear
        blocks: dict[str, nn.Module] = {}
        for name, (start, stop) in rows.items():
            child = kind(linear.in_features, stop - start, bias=linear.bias is not None, device="meta")
            weight = linear.weight.data[start:stop].clone()  # (rows_b, in)
            child.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
            if linear.bias is not None:
                bias = linear.bias.data[start:stop].clone()
                child.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
            blocks[name] = child
        return cls(blocks)

    @property
    def in_features(self) -> int:
        """Input width, shared by every block."""
        return self._block_shape(self.block_names[0])[1]

    @property
    def out_features(self) -> int:
        """Output width: the rows of all blocks together."""
        return sum(self._block_shape(name)[0] for name in self.block_names)

    def _block_shape(self, name: str) -> tuple[int, int]:
        """(rows_b, in) of block ``name``'s weight, under a peft layer if it carries one (also when quantised)."""
        module = getattr(self, name)
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        return int(base.out_features), int(base.in_features)

    def row_ranges(self) -> dict[str, tuple[int, int]]:
        """Block name -> (start, stop) rows of the fused weight."""
        out, start = {}, 0
        for name in self.block_names:
            stop = start + self._block_shape(name)[0]
            out[name] = (start, stop)
            start = stop
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused output (..., out) of ``x`` (..., in): each block gives (..., rows_b), concatenated in row order."""
        return torch.cat([getattr(self, name)(x) for name in self.block_names], dim=-1)

    def to_linear(self) -> nn.Linear:
        """One Linear with the blocks' rows concatenated (bit-exact). Adapters must be merged or removed first.

        Raises:
            ValueError: If a block still carries an adapter layer.
        """
        children = [getattr(self, name) for name in self.block_names]
        if any(not isinstance(c, nn.Linear) for c in children):
            raise ValueError("merge or unload the adapters before fusing the row blocks back")
        weight = torch.cat([c.weight.data for c in children], dim=0)  # (out, in)
        has_bias = children[0].bias is not None
        kind = OpenELMLinear if all(isinstance(c, OpenELMLinear) for c in children) else nn.Linear
        fused = kind(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=children[0].weight.requires_grad)
        if has_bias:
            fused.bias = nn.Parameter(torch.cat([c.bias.data for c in children]), requires_grad=False)
        return fused

    def extra_repr(self) -> str:
        """The blocks and their rows, for ``repr(model)``."""
        return ", ".join(f"{name}={start}:{stop}" for name, (start, stop) in self.row_ranges().items())


def split_fused_modules(model: nn.Module, row_blocks: Mapping[str, Mapping[str, tuple[int, int]]]) -> list[str]:
    """Replace each named fused Linear by a :class:`RowSplitLinear` (modules already split are left alone).

    Args:
        model: The base model.
        row_blocks: Full module name -> block name -> (start, stop) rows.

    Returns:
        The names of the modules that were split.
    """
    done: list[str] = []
    for name, rows in row_blocks.items():
        module = model.get_submodule(name)
        if isinstance(module, RowSplitLinear):
            if module.row_ranges() != {k: tuple(v) for k, v in rows.items()}:
                raise ValueError(f"{name} is already split into other row blocks")
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name} is a {type(module).__name__}, not a Linear; it cannot be split into rows")
        model.set_submodule(name, RowSplitLinear.from_linear(module, {k: tuple(v) for k, v in rows.items()}))
        done.append(name)
    return done


def fuse_split_modules(model: nn.Module) -> list[str]:
    """Turn every :class:`RowSplitLinear` back into one Linear (bit-exact row concatenation).

    Returns:
        The names of the fused modules.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, RowSplitLinear)]
    for name in names:
        model.set_submodule(name, model.get_submodule(name).to_linear())
    return names


__all__ = ["RowSplitLinear", "fuse_split_modules", "split_fused_modules"]

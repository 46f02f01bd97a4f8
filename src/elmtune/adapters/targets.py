"""Target resolution: from ``AdapterConfig.targets`` and ``layers`` to the exact list of modules handed to peft.

OpenELM presets name Apple's modules; sub-projections (``q``, ``k``, ``v`` inside ``qkv_proj``; ``gate``, ``up``
inside ``proj_1``) use each layer's own head counts and FFN width. Any other transformers model is targeted with
``all-linear``, module names or ``re:<regex>``. Zero matches is an error that lists what the model has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from elmtune.adapters.config import AdapterConfig, AdapterError

OPENELM_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": ("qkv_proj", "out_proj"),
    "mlp": ("proj_1", "proj_2"),
    "all": ("qkv_proj", "out_proj", "proj_1", "proj_2"),
    "apple": ("qkv_proj", "out_proj", "proj_1", "proj_2", "token_embeddings"),
}
"""OpenELM presets -> module names. ``apple`` is Apple's published PEFT recipe (all four projections + embedding)."""

SUB_PROJECTIONS: dict[str, str] = {"q": "qkv_proj", "k": "qkv_proj", "v": "qkv_proj", "gate": "proj_1", "up": "proj_1"}
"""Sub-projection -> the fused OpenELM module that holds its rows."""

ALL_LINEAR = "all-linear"
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class Target:
    """One module that receives an adapter.

    Attributes:
        name: Full module name handed to peft (for a sub-projection, the split child, e.g. ``...qkv_proj.q``).
        kind: Short name used to group modules for rank strategies (``qkv_proj``, ``q``, ``q_proj``...).
        layer: Decoder-layer index, or ``None`` outside the blocks (embedding).
        in_features: Input width.
        out_features: Output width (rows of the weight; the block's rows for a sub-projection).
        width: The layer-dependent size that ``proportional``/``budget`` ranks follow.
        embedding: Whether the module is an ``nn.Embedding``.
        fused: For a sub-projection, the full name of the fused module (Apple's key prefix).
        rows: For a sub-projection, its ``(start, stop)`` rows in the fused weight.
    """

    name: str
    kind: str
    layer: int | None
    in_features: int
    out_features: int
    width: int
    embedding: bool = False
    fused: str | None = None
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class TargetPlan:
    """The resolved targets and the fused modules that must be split into row blocks first."""

    targets: tuple[Target, ...]
    row_blocks: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=dict)
    model_dim: int | None = None

    @property
    def names(self) -> list[str]:
        """Full module names of the targets, in module order: peft's ``target_modules``."""
        return [t.name for t in self.targets]


def layer_index(name: str) -> int | None:
    """Decoder-layer index in a module name (``transformer.layers.3.attn.qkv_proj`` -> 3), else None."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def is_openelm(model: nn.Module) -> bool:
    """Whether ``model`` is elmtune's native OpenELM (its config has ``model_type == "openelm"``)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "openelm"


def _model_dim(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("model_dim", "hidden_size", "n_embd", "d_model"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def _shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an adaptable module, None for anything else."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return None


def adaptable_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Full name -> (in, out) of every Linear, Conv1D and Embedding module, in module order."""
    return {name: shape for name, module in model.named_modules() if (shape := _shape(module)) is not None}


def available_names(model: nn.Module) -> list[str]:
    """The short names (and OpenELM presets/sub-projections) a user can put in ``targets``, for error messages."""
    names = sorted({name.rsplit(".", 1)[-1] for name in adaptable_modules(model)})
    if is_openelm(model):
        return [*OPENELM_PRESETS, *SUB_PROJECTIONS, ALL_LINEAR, *names]
    return [ALL_LINEAR, *names]


def _width(in_features: int, out_features: int, model_dim: int | None) -> int:
    """The side of a projection that is not the model width (OpenELM's per-layer size)."""
    if model_dim is None:
        return max(in_features, out_features)
    return in_features if out_features == model_dim else out_features


def _no_match(item: str, model: nn.Module) -> AdapterError:
    return AdapterError(
        f"target '{item}' matches no Linear or Embedding module of this model; available: "
        f"{', '.join(available_names(model))}"
    )


def _expand(item: str, model: nn.Module, modules: dict[str, tuple[int, int]]) -> tuple[list[str], list[str]]:
    """One ``targets`` item -> (whole module names, sub-projection names). Raises on zero matches."""
    openelm = is_openelm(model)
    if item in OPENELM_PRESETS or item in SUB_PROJECTIONS:
        if not openelm:
            kind = "preset" if item in OPENELM_PRESETS else "sub-projection"
            raise AdapterError(
                f"target {kind} '{item}' names OpenELM modules; for this model use {ALL_LINEAR}, module names or "
                f"re:<regex> (available: {', '.join(available_names(model))})"
            )
        if item in SUB_PROJECTIONS:
            return [], [item]
        names: list[str] = []
        for short in OPENELM_PRESETS[item]:
            names += [n for n in modules if n == short or n.endswith("." + short)]
        return names, []
    if item == ALL_LINEAR:
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        by_name = dict(model.named_modules())
        names = [n for n in modules if not isinstance(by_name[n], nn.Embedding) and by_name[n] is not output]
    elif item.startswith("re:"):
        try:
            pattern = re.compile(item[3:])
        except re.error as err:
            raise AdapterError(f"target '{item}' is not a valid regex: {err}") from None
        names = [n for n in modules if pattern.fullmatch(n)]
    else:
        names = [n for n in modules if n == item or n.endswith("." + item)]
    if not names:
        raise _no_match(item, model)
    return names, []


def _expand_all(
    model: nn.Module, cfg: AdapterConfig, modules: dict[str, tuple[int, int]]
) -> tuple[set[str], list[str]]:
    """Every ``cfg.targets`` item expanded: (whole module names, sub-projection names in first-seen order)."""
    whole: set[str] = set()
    subs: list[str] = []
    for item in cfg.targets:
        names, sub = _expand(item, model, modules)
        whole.update(names)
        subs += [s for s in sub if s not in subs]
    return whole, subs


def _check_layers(layers: tuple[int, ...] | None, num_layers: int) -> None:
    """Raise if ``layers`` names a decoder layer the model does not have."""
    if layers is not None:
        outside = [i for i in layers if i >= num_layers]
        if outside:
            raise AdapterError(f"layers {outside} do not exist: this model has layers 0-{num_layers - 1}")


def _in_layers(name: str, layers: tuple[int, ...] | None) -> bool:
    """Whether module ``name`` is inside the selected layers (modules outside the blocks always are)."""
    index = layer_index(name)
    return layers is None or index is None or index in layers


def _sub_projection_rows(
    model: nn.Module, modules: dict[str, tuple[int, int]], subs: list[str], layers: tuple[int, ...] | None
) -> dict[str, dict[str, tuple[int, int]]]:
    """Full name of each selected fused module that holds a targeted sub-projection -> its row blocks.

    Every block of the fused module is listed (all of them are split out), with OpenELM's per-layer row ranges.
    """
    row_blocks: dict[str, dict[str, tuple[int, int]]] = {}
    if not subs:
        return row_blocks
    geometry = model.config.geometry
    for fused_short in dict.fromkeys(SUB_PROJECTIONS[s] for s in subs):
        for name in modules:
            index = layer_index(name)
            if not name.endswith("." + fused_short) or index is None or not _in_layers(name, layers):
                continue
            slices = geometry.layers[index].row_slices()
            row_blocks[name] = {b: (start, stop) for b, (mod, start, stop) in slices.items() if mod == fused_short}
    return row_blocks


def _check_overlap(whole: set[str], row_blocks: Mapping[str, object], subs: list[str]) -> None:
    """Raise if a fused module is targeted both whole and by its sub-projections."""
    overlap = sorted(whole & set(row_blocks))
    if overlap:
        short = overlap[0].rsplit(".", 1)[-1]
        raise AdapterError(
            f"targets overlap: '{short}' is targeted whole and by its sub-projections "
            f"({', '.join(s for s in subs if SUB_PROJECTIONS[s] == short)}); keep one"
        )


def _sub_projection_targets(
    name: str, in_features: int, blocks: Mapping[str, tuple[int, int]], subs: list[str]
) -> list[Target]:
    """The targeted row blocks of fused module ``name``, in row order."""
    return [
        Target(
            name=f"{name}.{block}",
            kind=block,
            layer=layer_index(name),
            in_features=in_features,
            out_features=stop - start,
            width=stop - start,
            fused=name,
            rows=(start, stop),
        )
        for block, (start, stop) in blocks.items()
        if block in subs
    ]


def resolve_targets(model: nn.Module, cfg: AdapterConfig) -> TargetPlan:
    """Resolve ``cfg.targets`` and ``cfg.layers`` against ``model``.

    Args:
        model: The base model (not yet wrapped by peft).
        cfg: The adapter config.

    Returns:
        The targets in module order, and the fused modules to split for sub-projections.

    Raises:
        AdapterError: A target matches nothing (the message lists the available names), a layer index is out of
            range, the layer subset leaves nothing, or a fused module is targeted both whole and by sub-projection.
    """
    modules = adaptable_modules(model)
    model_dim = _model_dim(model)
    whole, subs = _expand_all(model, cfg, modules)
    num_layers = 1 + max((i for n in modules if (i := layer_index(n)) is not None), default=-1)
    _check_layers(cfg.layers, num_layers)
    row_blocks = _sub_projection_rows(model, modules, subs, cfg.layers)
    _check_overlap(whole, row_blocks, subs)

    targets: list[Target] = []
    for name, (in_features, out_features) in modules.items():
        if not _in_layers(name, cfg.layers):
            continue
        if name in whole:
            targets.append(
                Target(
                    name=name,
                    kind=name.rsplit(".", 1)[-1],
                    layer=layer_index(name),
                    in_features=in_features,
                    out_features=out_features,
                    width=_width(in_features, out_features, model_dim),
                    embedding=_is_embedding(model, name),
                )
            )
        elif name in row_blocks:
            targets += _sub_projection_targets(name, in_features, row_blocks[name], subs)
    if not targets:
        raise AdapterError(
            f"targets {', '.join(cfg.targets)} with layers {list(cfg.layers or [])} select no module "
            f"(this model has layers 0-{num_layers - 1})"
        )
    return TargetPlan(targets=tuple(targets), row_blocks=row_blocks, model_dim=model_dim)


def _is_embedding(model: nn.Module, name: str) -> bool:
    """Whether module ``name`` of ``model`` is an ``nn.Embedding``."""
    return isinstance(model.get_submodule(name), nn.Embedding)


__all__ = [
    "ALL_LINEAR",
    "OPENELM_PRESETS",
    "SUB_PROJECTIONS",
    "Target",
    "TargetPlan",
    "adaptable_modules",
    "available_names",
    "is_openelm",
    "layer_index",
    "resolve_targets",
]

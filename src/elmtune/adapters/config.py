"""``AdapterConfig``: what to adapt and how (LoRA or DoRA), as a typed, validated, frozen dataclass.

The config is model-independent: it names targets and a rank strategy. :func:`elmtune.adapters.apply_adapter`
resolves it against a concrete model into peft's ``LoraConfig`` (explicit ``target_modules``, ``rank_pattern`` and
``alpha_pattern``), so a saved adapter reloads in plain peft.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from elmtune.errors import ElmtuneError

Method = Literal["lora", "dora"]
RankStrategy = Literal["uniform", "proportional", "budget"]

METHODS: tuple[str, ...] = ("lora", "dora")
RANK_STRATEGIES: tuple[str, ...] = ("uniform", "proportional", "budget")
INITS: tuple[str, ...] = ("default", "gaussian", "pissa", "olora", "orthogonal")
"""Adapter initialisations (peft's); ``pissa_niter_N`` (fast-SVD PiSSA with N subspace iterations) is also accepted.
``pissa``, ``pissa_niter_N`` and ``olora`` rewrite the base weights in memory; see ``docs/adapters.md``."""
BASE_REWRITING_INITS: tuple[str, ...] = ("pissa", "olora")

_PISSA_NITER = re.compile(r"^pissa_niter_\d+$")
_LAYER_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


class AdapterError(ElmtuneError):
    """A user mistake in an adapter config, a target or an adapter directory (one-line message)."""


def parse_layers(spec: str | int | Iterable[int] | None) -> tuple[int, ...] | None:
    """Normalise a layer subset: ``"8-15"``, ``"0,2,5-7"``, ``3`` or ``[0, 3]`` -> sorted unique indices.

    Args:
        spec: The subset; ``None`` (or ``"all"``) means every layer.

    Returns:
        Sorted layer indices, or ``None`` for all layers.

    Raises:
        AdapterError: On a malformed spec, a negative index or a descending range.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    indices: list[int] = []
    if isinstance(spec, bool):
        raise AdapterError(f"layers must be a range like '8-15' or a list of indices, not {spec!r}")
    if isinstance(spec, int):
        indices = [spec]
    elif isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            match = _LAYER_RANGE.match(part)
            if match:
                start, stop = int(match.group(1)), int(match.group(2))
                if stop < start:
                    raise AdapterError(f"layer range '{part}' is descending; write it as '{stop}-{start}'")
                indices.extend(range(start, stop + 1))
            elif part.isdigit():
                indices.append(int(part))
            else:
                raise AdapterError(f"cannot read layers {spec!r}: use a range '8-15', a list '0,2,5-7' or [0, 2]")
    else:
        try:
            indices = [int(i) for i in spec]
        except (TypeError, ValueError):
            raise AdapterError(f"layers must be a range like '8-15' or a list of indices, not {spec!r}") from None
    if any(i < 0 for i in indices):
        raise AdapterError(f"layer indices must be >= 0, got {spec!r}")
    if not indices:
        raise AdapterError("layers is empty; leave it out to adapt every layer")
    return tuple(sorted(set(indices)))


def parse_targets(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise targets: ``"q,v"`` or ``["q", "v"]`` -> ``("q", "v")``; a ``re:`` item is kept whole."""
    if isinstance(spec, str):
        items = [spec] if spec.strip().startswith("re:") else spec.split(",")
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise AdapterError(f"targets must be a list of names (or one comma-separated string), got {spec!r}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise AdapterError(f"targets must be names or 're:<regex>' strings, got {item!r}")
        item = item.strip()
        if item and item not in out:
            out.append(item)
    if not out:
        raise AdapterError("targets is empty: give a preset (attn, mlp, all, apple, all-linear) or module names")
    return tuple(out)


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA/DoRA settings; every field has Apple's OpenELM PEFT recipe as its default (except ``targets``).

    Attributes:
        method: ``lora`` or ``dora`` (weight-decomposed LoRA; magnitude per output row).
        r: Rank (the mean rank under ``proportional``; the reference rank under ``budget``).
        alpha: LoRA alpha; the update is scaled by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        dropout: Dropout on the adapter input.
        targets: Presets (``attn``, ``mlp``, ``all``, ``apple``, ``all-linear``), sub-projections inside OpenELM's
            fused matrices (``q``, ``k``, ``v``, ``gate``, ``up``), module names (matched as a suffix of the full name)
            or ``re:<regex>`` (matched against the full module name).
        layers: Restrict block modules to these layer indices (``None``: all). Modules outside the blocks (the
            embedding) are not affected.
        rank_strategy: ``uniform``, ``proportional`` (rank proportional to the layer's projection width, mean rank
            ``r``) or ``budget`` (as many trainable parameters as uniform ``r``, spread by width).
        use_rslora: Rank-stabilised scaling ``alpha / sqrt(r)``.
        init: Adapter initialisation: ``default`` (A Kaiming-uniform, B zero), ``gaussian``, ``pissa``,
            ``pissa_niter_N``, ``olora`` or ``orthogonal``.
        train_norms: Also train the RMSNorm weights (saved with the adapter).
    """

    method: Method = "lora"
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("all",)
    layers: tuple[int, ...] | None = None
    rank_strategy: RankStrategy = "uniform"
    use_rslora: bool = False
    init: str = "default"
    train_norms: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", parse_targets(self.targets))
        object.__setattr__(self, "layers", parse_layers(self.layers))
        if self.method not in METHODS:
            raise AdapterError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise AdapterError(f"r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise AdapterError(f"alpha must be a positive number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise AdapterError(f"dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.rank_strategy not in RANK_STRATEGIES:
            raise AdapterError(f"rank_strategy must be one of {', '.join(RANK_STRATEGIES)}, got {self.rank_strategy!r}")
        if self.init not in INITS and not _PISSA_NITER.match(str(self.init)):
            raise AdapterError(f"init must be one of {', '.join(INITS)} or pissa_niter_N, got {self.init!r}")
        if self.init == "orthogonal" and self.r % 2:
            raise AdapterError(f"init 'orthogonal' needs an even r, got {self.r}")
        if self.init == "orthogonal" and self.rank_strategy != "uniform":
            raise AdapterError("init 'orthogonal' needs even ranks in every module; use rank_strategy uniform with it")
        for name in ("use_rslora", "train_norms"):
            if not isinstance(getattr(self, name), bool):
                raise AdapterError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def rewrites_base(self) -> bool:
        """Whether the initialisation rewrites the base weights in memory (PiSSA, OLoRA)."""
        return any(self.init.startswith(prefix) for prefix in BASE_REWRITING_INITS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """Build from a mapping (e.g. parsed YAML); unknown keys are an error.

        Raises:
            AdapterError: Unknown keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise AdapterError(f"an adapter config must be a mapping of settings, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise AdapterError(f"unknown adapter config key(s) {names}; known: {', '.join(known)}")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> AdapterConfig:
        """Read a YAML file whose top level holds the fields, or an ``adapter:`` section of a run recipe.

        Raises:
            AdapterError: Missing or unreadable file, unknown keys or invalid values.
        """
        import yaml

        from elmtune.recipe_yaml import load_recipe_yaml

        path = Path(path)
        if not path.is_file():
            raise AdapterError(f"adapter config {path} does not exist")
        try:
            data = load_recipe_yaml(path) or {}
        except yaml.YAMLError as err:
            raise AdapterError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if isinstance(data, Mapping) and isinstance(data.get("adapter"), Mapping):
            data = data["adapter"]
        try:
            return cls.from_dict(data)
        except AdapterError as err:
            raise AdapterError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (lists, not tuples); ``from_dict(to_dict())`` gives an equal config."""
        out = asdict(self)
        out["targets"] = list(self.targets)
        out["layers"] = list(self.layers) if self.layers is not None else None
        return out


__all__ = ["AdapterConfig", "AdapterError", "parse_layers", "parse_targets"]

"""``AdapterConfig``: what to adapt and how (LoRA or DoRA), as a typed, validated, frozen dataclass.

The config is model-independent: it names targets and a rank strategy. :func:`elmtune.adapters.apply_adapter`
resolves it against a concrete model into peft's ``LoraConfig`` (explicit ``target_modules``, ``rank_pattern`` and
``alpha_pattern``), so a saved adapter reloads in plain peft.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from elmtune.config_mapping import require, section_from_mapping, section_to_dict
from elmtune.errors import ConfigError, ElmtuneError
from elmtune.recipe_yaml import read_config_file

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
    """A user mistake in a target or an adapter directory (one-line message); invalid settings raise ConfigError."""


def _bad_layers(message: str) -> ConfigError:
    return ConfigError(message, key="adapter.layers")


def _bad_targets(message: str) -> ConfigError:
    return ConfigError(message, key="adapter.targets")


def parse_layers(spec: str | int | Iterable[int] | None) -> tuple[int, ...] | None:
    """Normalise a layer subset: ``"8-15"``, ``"0,2,5-7"``, ``3`` or ``[0, 3]`` -> sorted unique indices.

    Args:
        spec: The subset; ``None`` (or ``"all"``) means every layer.

    Returns:
        Sorted layer indices, or ``None`` for all layers.

    Raises:
        ConfigError: On a malformed spec, a negative index or a descending range (key ``adapter.layers``).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    indices: list[int] = []
    if isinstance(spec, bool):
        raise _bad_layers(f"adapter.layers must be a range like '8-15' or a list of indices, not {spec!r}")
    if isinstance(spec, int):
        indices = [spec]
    elif isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            match = _LAYER_RANGE.match(part)
            if match:
                start, stop = int(match.group(1)), int(match.group(2))
                if stop < start:
                    raise _bad_layers(f"adapter.layers range '{part}' is descending; write it as '{stop}-{start}'")
                indices.extend(range(start, stop + 1))
            elif part.isdigit():
                indices.append(int(part))
            else:
                raise _bad_layers(f"cannot read adapter.layers {spec!r}: use a range '8-15', a list '0,2,5-7' or [0,2]")
    else:
        try:
            indices = [int(i) for i in spec]
        except (TypeError, ValueError):
            raise _bad_layers(f"adapter.layers must be a range like '8-15' or a list of indices: {spec!r}") from None
    if any(i < 0 for i in indices):
        raise _bad_layers(f"adapter.layers indices must be >= 0, got {spec!r}")
    if not indices:
        raise _bad_layers("adapter.layers is empty; leave it out to adapt every layer")
    return tuple(sorted(set(indices)))


def parse_targets(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise targets: ``"q,v"`` or ``["q", "v"]`` -> ``("q", "v")``; a ``re:`` item is kept whole.

    Raises:
        ConfigError: Not names, or none (key ``adapter.targets``).
    """
    if isinstance(spec, str):
        items = [spec] if spec.strip().startswith("re:") else spec.split(",")
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise _bad_targets(f"adapter.targets must be a list of names (or one comma-separated string), got {spec!r}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _bad_targets(f"adapter.targets must be names or 're:<regex>' strings, got {item!r}")
        item = item.strip()
        if item and item not in out:
            out.append(item)
    if not out:
        raise _bad_targets("adapter.targets is empty: give presets (attn, mlp, all, apple, all-linear) or module names")
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
        num = (int, float)
        require(
            "adapter",
            [
                (self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, got {self.method!r}"),
                (_is(self.r, int) and self.r > 0, "r", f"must be a positive integer, got {self.r!r}"),
                (_is(self.alpha, num) and self.alpha > 0, "alpha", f"must be a positive number, got {self.alpha!r}"),
                (_is(self.dropout, num) and 0 <= self.dropout < 1, "dropout", f"must be in [0, 1), not {self.dropout}"),
                (
                    self.rank_strategy in RANK_STRATEGIES,
                    "rank_strategy",
                    f"must be one of {', '.join(RANK_STRATEGIES)}, got {self.rank_strategy!r}",
                ),
                (
                    self.init in INITS or bool(_PISSA_NITER.match(str(self.init))),
                    "init",
                    f"must be one of {', '.join(INITS)} or pissa_niter_N, got {self.init!r}",
                ),
                (
                    self.init != "orthogonal" or not _is(self.r, int) or self.r % 2 == 0,
                    "init",
                    f"'orthogonal' needs an even r, got {self.r}",
                ),
                (
                    self.init != "orthogonal" or self.rank_strategy == "uniform",
                    "init",
                    "'orthogonal' needs even ranks in every module; use rank_strategy uniform with it",
                ),
                (isinstance(self.use_rslora, bool), "use_rslora", f"must be true or false, got {self.use_rslora!r}"),
                (isinstance(self.train_norms, bool), "train_norms", f"must be true or false, got {self.train_norms!r}"),
            ],
        )
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def rewrites_base(self) -> bool:
        """Whether the initialisation rewrites the base weights in memory (PiSSA, OLoRA)."""
        return any(self.init.startswith(prefix) for prefix in BASE_REWRITING_INITS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """Build from a mapping (e.g. parsed YAML); unknown keys are an error.

        Raises:
            ConfigError: Unknown keys or invalid values, named as ``adapter.<key>``.
        """
        return section_from_mapping(cls, data, "adapter")

    @classmethod
    def from_yaml(cls, path: str | Path) -> AdapterConfig:
        """Read a YAML file whose top level holds the fields, or an ``adapter:`` section of a run recipe.

        Raises:
            ConfigError: Missing or unreadable file, unknown keys or invalid values; the message starts with the path.
        """
        data = read_config_file(path, "adapter config")
        if isinstance(data.get("adapter"), Mapping):
            data = data["adapter"]
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}", key=err.key) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (lists, not tuples); ``from_dict(to_dict())`` gives an equal config."""
        return section_to_dict(self)


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """``isinstance`` that does not take ``True``/``False`` for numbers."""
    return isinstance(value, kind) and not isinstance(value, bool)


__all__ = ["AdapterConfig", "AdapterError", "parse_layers", "parse_targets"]

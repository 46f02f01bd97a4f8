"""Per-layer geometry of OpenELM (layer-wise scaling), in plain Python.

OpenELM gives every decoder layer its own number of query/key-value heads and its own FFN width. This module
derives those numbers from the configuration fields exactly as Apple's configuration does, and answers shape and
parameter-count questions without importing torch, so the CLI can describe a model instantly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NORM_EPS = 1e-6
"""RMSNorm epsilon: hard-coded in OpenELM (not a config field)."""


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` the way OpenELM (and MobileNet) does.

    Rounds to the nearest multiple with ties going up, never below ``min_value`` (default ``divisor``); if that
    lands more than 10 % below ``value``, one more ``divisor`` is added.

    Args:
        value: The number to round.
        divisor: The multiple to round to.
        min_value: The smallest allowed result; defaults to ``divisor``.

    Returns:
        The rounded integer.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def interpolate(bounds: Sequence[float], num: int) -> list[float]:
    """Evenly spaced values from ``bounds[0]`` to ``bounds[1]`` inclusive, rounded to 2 decimals (numpy linspace)."""
    low, high = float(bounds[0]), float(bounds[1])
    if num == 1:
        return [round(low, 2)]
    step = (high - low) / (num - 1)
    return [round(low + i * step, 2) for i in range(num)]


def per_layer_multipliers(value: float | Sequence[float], num_layers: int, field: str) -> list[float]:
    """Expand a multiplier field (a number, a (min, max) pair, or a full per-layer list) to one value per layer.

    Raises:
        ValueError: If a list has neither 2 nor ``num_layers`` entries.
    """
    if isinstance(value, (int, float)):
        return [float(value)] * num_layers
    values = [float(v) for v in value]
    if len(values) == num_layers:
        return values
    if len(values) == 2:
        return interpolate(values, num_layers)
    raise ValueError(f"{field} must be a number, a (min, max) pair or a list of {num_layers} values; got {value!r}")


@dataclass(frozen=True)
class LayerGeometry:
    """Shapes of one OpenELM decoder layer."""

    index: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    model_dim: int
    ffn_dim: int
    ffn_with_glu: bool = True
    normalize_qk: bool = True

    @property
    def q_rows(self) -> int:
        """Rows of ``qkv_proj`` that produce queries (they come first)."""
        return self.num_query_heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        """Rows of ``qkv_proj`` that produce keys (and, again, values)."""
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_shape(self) -> tuple[int, int]:
        """(rows, cols) of ``qkv_proj``'s weight: Q | K | V rows by the model width."""
        return (self.q_rows + 2 * self.kv_rows, self.model_dim)

    @property
    def out_shape(self) -> tuple[int, int]:
        """(rows, cols) of ``out_proj``'s weight: the model width by the query rows."""
        return (self.model_dim, self.q_rows)

    @property
    def proj_1_shape(self) -> tuple[int, int]:
        """(rows, cols) of ``proj_1``'s weight: gate | up rows (up only without GLU) by the model width."""
        return ((2 if self.ffn_with_glu else 1) * self.ffn_dim, self.model_dim)

    @property
    def proj_2_shape(self) -> tuple[int, int]:
        """(rows, cols) of ``proj_2``'s weight: the model width by the FFN width."""
        return (self.model_dim, self.ffn_dim)

    def row_slices(self) -> dict[str, tuple[str, int, int]]:
        """Row ranges of the sub-projections inside the fused matrices: name -> (module, start, stop)."""
        q, kv = self.q_rows, self.kv_rows
        slices = {
            "q": ("qkv_proj", 0, q),
            "k": ("qkv_proj", q, q + kv),
            "v": ("qkv_proj", q + kv, q + 2 * kv),
        }
        if self.ffn_with_glu:
            slices["gate"] = ("proj_1", 0, self.ffn_dim)
            slices["up"] = ("proj_1", self.ffn_dim, 2 * self.ffn_dim)
        return slices

    @property
    def num_parameters(self) -> int:
        """Parameters of the layer: four projections, two d-sized norms and (optionally) two head_dim-sized norms."""
        mats = (self.qkv_shape, self.out_shape, self.proj_1_shape, self.proj_2_shape)
        norms = 2 * self.model_dim + (2 * self.head_dim if self.normalize_qk else 0)
        return sum(r * c for r, c in mats) + norms


@dataclass(frozen=True)
class ModelGeometry:
    """Geometry of a whole OpenELM model."""

    layers: tuple[LayerGeometry, ...]
    vocab_size: int
    model_dim: int
    tied: bool

    @property
    def embedding_parameters(self) -> int:
        """Parameters of the token embedding (vocab x d); an untied output head has as many again."""
        return self.vocab_size * self.model_dim

    @property
    def num_parameters(self) -> int:
        """All parameters, the tied embedding counted once."""
        head = 0 if self.tied else self.vocab_size * self.model_dim
        return self.embedding_parameters + head + sum(layer.num_parameters for layer in self.layers) + self.model_dim

    def fingerprint(self) -> str:
        """A short, stable description of the shapes: equal fingerprints mean interchangeable weights."""
        parts = [f"v{self.vocab_size}", f"d{self.model_dim}", "tied" if self.tied else "untied"]
        parts += [f"{g.num_query_heads}/{g.num_kv_heads}x{g.head_dim}:{g.ffn_dim}" for g in self.layers]
        return ";".join(parts)


def head_counts(cfg: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Per-layer query and key-value head counts from config fields.

    Lists stored in the config (as hub ``config.json`` files have them) are used as they are; otherwise the counts
    are derived from ``qkv_multipliers`` with :func:`make_divisible`.

    Raises:
        ValueError: On inconsistent fields (wrong list length, widths not divisible by ``head_dim``, ...).
    """
    num_layers = int(cfg["num_transformer_layers"])
    head_dim = int(cfg["head_dim"])
    model_dim = int(cfg["model_dim"])
    groups = cfg.get("num_gqa_groups", 1)
    head_multiple = int(groups) if groups is not None else 2
    stored_q, stored_kv = cfg.get("num_query_heads"), cfg.get("num_kv_heads")
    if isinstance(stored_q, (list, tuple)) and len(stored_q) == num_layers:
        n_q = [int(v) for v in stored_q]
        if isinstance(stored_kv, (list, tuple)) and len(stored_kv) == num_layers:
            n_kv = [int(v) for v in stored_kv]
        else:
            n_kv = [q // head_multiple for q in n_q]
    else:
        mults = per_layer_multipliers(cfg.get("qkv_multipliers", 1.0), num_layers, "qkv_multipliers")
        q_dims = [make_divisible(model_dim * m, head_dim * head_multiple) for m in mults]
        for q_dim in q_dims:
            if q_dim % head_dim:
                raise ValueError(f"query width {q_dim} is not a multiple of head_dim {head_dim}")
        n_q = [q_dim // head_dim for q_dim in q_dims]
        n_kv = [q // head_multiple for q in n_q]
    for i, (q, kv) in enumerate(zip(n_q, n_kv, strict=True)):
        if kv <= 0 or q % kv:
            raise ValueError(f"layer {i}: {q} query heads are not a multiple of {kv} key-value heads")
    return n_q, n_kv


def ffn_dims(cfg: Mapping[str, Any]) -> list[int]:
    """Per-layer FFN widths; always derived from ``ffn_multipliers`` (they are never stored)."""
    num_layers = int(cfg["num_transformer_layers"])
    mults = per_layer_multipliers(cfg.get("ffn_multipliers", 4.0), num_layers, "ffn_multipliers")
    divisor = int(cfg.get("ffn_dim_divisor", 256))
    return [make_divisible(m * int(cfg["model_dim"]), divisor) for m in mults]


def geometry_from_dict(cfg: Mapping[str, Any]) -> ModelGeometry:
    """Build the :class:`ModelGeometry` of a config given as a mapping of OpenELM config fields."""
    n_q, n_kv = head_counts(cfg)
    widths = ffn_dims(cfg)
    layers = tuple(
        LayerGeometry(
            index=i,
            num_query_heads=q,
            num_kv_heads=kv,
            head_dim=int(cfg["head_dim"]),
            model_dim=int(cfg["model_dim"]),
            ffn_dim=f,
            ffn_with_glu=bool(cfg.get("ffn_with_glu", True)),
            normalize_qk=bool(cfg.get("normalize_qk_projections", False)),
        )
        for i, (q, kv, f) in enumerate(zip(n_q, n_kv, widths, strict=True))
    )
    return ModelGeometry(
        layers=layers,
        vocab_size=int(cfg.get("vocab_size", 32000)),
        model_dim=int(cfg["model_dim"]),
        tied=bool(cfg.get("share_input_output_layers", False)),
    )


def format_count(n: int) -> str:
    """Human-readable parameter count: 271,527,168 -> '271.5M'."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)

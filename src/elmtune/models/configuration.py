"""``OpenELMConfig``: Apple's configuration fields and defaults, as a transformers config (``model_type="openelm"``)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig

from elmtune.models.geometry import ModelGeometry, ffn_dims, geometry_from_dict, head_counts, per_layer_multipliers
from elmtune.models.presets import PRESETS, hub_id, preset_name


class OpenELMConfig(PreTrainedConfig):
    """Configuration of an OpenELM model, field for field and default for default as Apple's.

    After construction ``num_query_heads``, ``num_kv_heads`` and ``ffn_multipliers`` are per-layer lists. Lists found
    in a saved ``config.json`` are kept as they are; otherwise the lists are derived with OpenELM's layer-wise scaling.
    FFN widths are never stored: :attr:`ffn_dims` derives them.

    Build a published shape without any download with :meth:`from_preset`.
    """

    model_type: ClassVar[str] = "openelm"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cache", "past_key_values"]
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "num_transformer_layers",
        "hidden_size": "model_dim",
        "max_position_embeddings": "max_context_length",
        "tie_word_embeddings": "share_input_output_layers",
    }

    vocab_size: int = 32000
    max_context_length: int = 2048
    num_transformer_layers: int = 12
    model_dim: int = 2048
    head_dim: int = 128
    qkv_multipliers: float | int | list[float] | tuple[float, ...] = 1.0
    num_query_heads: int | list[int] | None = None
    num_kv_heads: int | list[int] | None = None
    num_gqa_groups: int | None = 1
    ffn_multipliers: float | int | list[float] | tuple[float, ...] = 4.0
    ffn_with_glu: bool = True
    ffn_dim_divisor: int = 256
    activation_fn_name: str = "swish"
    normalization_layer_name: str = "rms_norm"
    normalize_qk_projections: bool = False
    share_input_output_layers: bool = False
    rope_freq_constant: int | float = 10000
    rope_max_length: int = 4096
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.qkv_multipliers, tuple):
            self.qkv_multipliers = list(self.qkv_multipliers)
        self.num_query_heads, self.num_kv_heads = head_counts(self._fields())
        self.ffn_multipliers = per_layer_multipliers(
            self.ffn_multipliers, self.num_transformer_layers, "ffn_multipliers"
        )
        if self.normalization_layer_name != "rms_norm":
            raise ValueError(f"normalization_layer_name {self.normalization_layer_name!r}: only 'rms_norm' exists")
        super().__post_init__(**kwargs)

    def _fields(self) -> dict[str, Any]:
        return {
            "num_transformer_layers": self.num_transformer_layers,
            "model_dim": self.model_dim,
            "head_dim": self.head_dim,
            "num_gqa_groups": self.num_gqa_groups,
            "qkv_multipliers": self.qkv_multipliers,
            "num_query_heads": self.num_query_heads,
            "num_kv_heads": self.num_kv_heads,
            "ffn_multipliers": self.ffn_multipliers,
            "ffn_dim_divisor": self.ffn_dim_divisor,
            "ffn_with_glu": self.ffn_with_glu,
            "normalize_qk_projections": self.normalize_qk_projections,
            "share_input_output_layers": self.share_input_output_layers,
            "vocab_size": self.vocab_size,
        }

    @property
    def ffn_dims(self) -> list[int]:
        """FFN intermediate width of every layer (``proj_1`` has twice as many rows with GLU)."""
        return ffn_dims(self._fields())

    @property
    def geometry(self) -> ModelGeometry:
        """Per-layer shapes and parameter counts."""
        return geometry_from_dict(self._fields())

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> OpenELMConfig:
        """Config of a named shape: ``270M``, ``450M``, ``1_1B``, ``3B``, ``tiny``, or an Apple hub id.

        Args:
            name: A preset name or ``apple/OpenELM-<size>[-Instruct]``.
            **overrides: Config fields to change.

        Raises:
            ValueError: If the name is not a known preset.
        """
        key = preset_name(name)
        if key is None:
            raise ValueError(f"unknown OpenELM preset {name!r}; known: {', '.join(PRESETS)}")
        fields = {**PRESETS[key], **overrides}
        source = hub_id(key, instruct=name.lower().endswith("-instruct"))
        if source is not None and "auto_map" not in fields:
            # Lets Apple's own remote code load a directory saved from this config (trust_remote_code=True).
            fields["auto_map"] = {
                "AutoConfig": f"{source}--configuration_openelm.OpenELMConfig",
                "AutoModelForCausalLM": f"{source}--modeling_openelm.OpenELMForCausalLM",
            }
        config = cls(**fields)
        config.architectures = ["OpenELMForCausalLM"]
        return config


__all__ = ["OpenELMConfig"]

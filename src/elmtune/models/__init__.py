"""Native OpenELM for transformers: config, model, tokenizer and loading helpers.

``import elmtune`` registers ``model_type="openelm"`` with ``AutoConfig`` and ``AutoModelForCausalLM``; this package
imports no Auto class at import time, because that registration may run while transformers imports them.

Public names load on first use (:mod:`elmtune.lazy_exports`), so the torch-free modules (``presets``, ``geometry``,
``model_names``) can be imported without torch.
"""

from __future__ import annotations

from elmtune.lazy_exports import export_names, lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "configuration": ("OpenELMConfig",),
    "dtypes": ("resolve_dtype",),
    "geometry": ("LayerGeometry", "ModelGeometry", "geometry_from_dict"),
    "loading": ("load_model",),
    "modeling": ("CACHE_FIELD", "OpenELMForCausalLM", "OpenELMModel", "saved_keys"),
    "registration": ("register",),
    "tokenizer": ("PAD_TOKEN_ID", "load_tokenizer"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = export_names(_EXPORTS)

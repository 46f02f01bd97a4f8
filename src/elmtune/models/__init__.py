"""Native OpenELM for transformers: config, model, tokenizer and loading helpers.

``import elmtune`` registers ``model_type="openelm"`` with ``AutoConfig`` and ``AutoModelForCausalLM``; this package
imports no Auto class at import time, because that registration may run while transformers imports them.
"""

from elmtune.models.configuration import OpenELMConfig
from elmtune.models.dtypes import resolve_dtype
from elmtune.models.geometry import LayerGeometry, ModelGeometry, geometry_from_dict
from elmtune.models.loading import load_model
from elmtune.models.modeling import CACHE_FIELD, OpenELMForCausalLM, OpenELMModel, saved_keys
from elmtune.models.registration import register
from elmtune.models.tokenizer import PAD_TOKEN_ID, load_tokenizer

__all__ = [
    "CACHE_FIELD",
    "PAD_TOKEN_ID",
    "LayerGeometry",
    "ModelGeometry",
    "OpenELMConfig",
    "OpenELMForCausalLM",
    "OpenELMModel",
    "geometry_from_dict",
    "load_model",
    "load_tokenizer",
    "register",
    "resolve_dtype",
    "saved_keys",
]

"""Register the native OpenELM classes with transformers' Auto classes."""

from __future__ import annotations


def register() -> None:
    """Make ``AutoConfig`` and ``AutoModelForCausalLM`` resolve ``model_type="openelm"`` to elmtune's classes.

    ``import elmtune`` already arranges this (see ``elmtune._autoregister``); calling it again is harmless.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from elmtune.models.configuration import OpenELMConfig
    from elmtune.models.modeling import OpenELMForCausalLM

    AutoConfig.register("openelm", OpenELMConfig, exist_ok=True)
    AutoModelForCausalLM.register(OpenELMConfig, OpenELMForCausalLM, exist_ok=True)

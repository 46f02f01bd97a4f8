"""``load_model``: one entry point for presets, hub ids and local checkpoint directories."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel

from elmtune.errors import ModelNotFoundError
from elmtune.models.checkpoint_files import CheckpointFilesError
from elmtune.models.configuration import OpenELMConfig
from elmtune.models.dtypes import resolve_dtype
from elmtune.models.model_names import check_model_name, is_preset
from elmtune.models.modeling import OpenELMForCausalLM
from elmtune.models.presets import preset_name
from elmtune.models.registration import register

logger = logging.getLogger(__name__)

PRESET_SEED = 0
"""Seed of a preset's random weights: ``load_model("tiny")`` is the same model in every process, so an adapter
trained on a preset can be evaluated and merged on it later."""


def _not_found(name: str, reason: str) -> ModelNotFoundError:
    preset = preset_name(name)
    hint = f" To build random weights of the same shape, use the preset '{preset}'." if preset else ""
    return ModelNotFoundError(
        f"cannot load '{name}': {reason}. Download it where there is network (`hf download {name}`) and pass the "
        f"local directory, or check the name.{hint}"
    )


def load_model(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    revision: str | None = None,
) -> PreTrainedModel:
    """Load OpenELM (or any transformers causal LM) from a preset, a hub id or a local directory.

    Args:
        name_or_path: A preset (``270M``, ``450M``, ``1_1B``, ``3B``, ``tiny``: random weights from a fixed seed, no
            download), a local checkpoint directory, or a hub id such as ``apple/OpenELM-270M-Instruct`` (downloaded
            or read from the Hugging Face cache). OpenELM checkpoints always load with elmtune's native class; remote
            code is never executed.
        dtype: Weight dtype (``"bf16"``, ``torch.float32``...); ``None`` keeps the checkpoint's dtype (fp32 for a
            preset).
        device: Device to move the model to; ``None`` leaves it on the CPU.
        revision: Hub revision (branch, tag or commit) for a hub id.

    Returns:
        The model in eval mode.

    Raises:
        ModelNotFoundError: The name is not a preset, not a directory, and cannot be fetched (e.g. offline and not
            cached); the message says what to do.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    register()
    name = str(name_or_path)
    check_model_name(name)
    torch_dtype = resolve_dtype(dtype)
    if is_preset(name):
        config = OpenELMConfig.from_preset(name)
        logger.info("building preset %s with random weights (no download)", preset_name(name))
        with torch.random.fork_rng(devices=[]):  # deterministic weights; the caller's RNG stream is left as it was
            torch.manual_seed(PRESET_SEED)
            with no_init_weights():  # torch's per-layer defaults, which Apple's initialisation would overwrite
                model: PreTrainedModel = OpenELMForCausalLM(config)
            model.init_weights()  # Apple's initialisation (``_init_weights``) once, then the tied head
        if torch_dtype is not None:
            model = model.to(torch_dtype)
    else:
        path = Path(name).expanduser()
        if path.exists() and not (path / "config.json").is_file():
            raise ModelNotFoundError(f"'{name}' is a path but has no config.json; is it a model directory?")
        if path.is_dir() and any(path.glob("*.bin")) and not any(path.glob("*.safetensors")):
            raise ModelNotFoundError(
                f"'{name}' holds only pickle weights (*.bin); elmtune loads safetensors only: re-save the model with "
                "save_pretrained(..., safe_serialization=True) where you trust the file"
            )
        try:
            config = AutoConfig.from_pretrained(str(path) if path.exists() else name, revision=revision)
        except OSError as err:
            raise _not_found(name, _reason(err)) from None
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(path) if path.exists() else name,
                config=config,
                dtype=torch_dtype if torch_dtype is not None else "auto",
                revision=revision,
                trust_remote_code=False,
                use_safetensors=True,  # never unpickle weights
            )
        except OSError as err:
            raise _not_found(name, _reason(err)) from None
        except SafetensorError as err:
            raise CheckpointFilesError(
                f"the weights of '{name}' are not complete safetensors files ({str(err).splitlines()[0]}); they are "
                "truncated or corrupt: save or download the checkpoint again"
            ) from None
    if device is not None:
        model = model.to(device)
    return model.eval()


def _reason(err: OSError) -> str:
    """One line saying why a hub download failed (offline and not cached, or the error's own first line)."""
    text = str(err).lower()
    if "offline" in text or "connect" in text or "cannot find the requested files" in text or "local" in text:
        return "it is not in the local Hugging Face cache and the Hub cannot be reached (offline)"
    return str(err).splitlines()[0] if str(err) else type(err).__name__

"""Apple's hub modeling code for OpenELM, loaded from a local directory with importlib (never from the network).

``--apple-code DIR`` points at the ``configuration_openelm.py`` and ``modeling_openelm.py`` that a hub download of
``apple/OpenELM-*`` contains. The two files are imported as a package of their own (the modeling file imports the
configuration relatively; an absolute import of ``configuration_openelm`` finds the same module). Nothing in them
is downloaded or executed through ``trust_remote_code``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

PACKAGE = "apple_openelm_code"
FILES = ("configuration_openelm.py", "modeling_openelm.py")
ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_JSON = ROOT / "src" / "elmtune" / "models" / "tokenizer_files" / "tokenizer.json"


def missing_files(directory: str | Path) -> list[str]:
    """The files of Apple's code that ``directory`` lacks."""
    return [name for name in FILES if not (Path(directory) / name).is_file()]


def _import(directory: Path, name: str) -> Any:
    qualified = f"{PACKAGE}.{name}"
    spec = importlib.util.spec_from_file_location(qualified, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


def load_apple_classes(directory: str | Path) -> tuple[type, type]:
    """(Apple's ``OpenELMConfig``, Apple's ``OpenELMForCausalLM``) imported from ``directory``."""
    directory = Path(directory).resolve()
    if PACKAGE not in sys.modules:
        package_spec = importlib.util.spec_from_loader(PACKAGE, loader=None, is_package=True)
        package = importlib.util.module_from_spec(package_spec)
        package.__path__ = [str(directory)]
        sys.modules[PACKAGE] = package
    configuration = _import(directory, "configuration_openelm")
    sys.modules.setdefault("configuration_openelm", configuration)  # copies that import it without the dot
    modeling = _import(directory, "modeling_openelm")
    return configuration.OpenELMConfig, modeling.OpenELMForCausalLM


def preset_config(preset: str) -> dict[str, Any]:
    """The config values of an elmtune preset, read from ``presets.py`` alone.

    Importing the ``elmtune`` package registers its model with transformers, which needs the transformers elmtune
    supports; Apple's code may run under an older one (``--apple-python``), so the plain-Python presets file is
    loaded by path instead.
    """
    path = ROOT / "src" / "elmtune" / "models" / "presets.py"
    spec = importlib.util.spec_from_file_location("_elmtune_presets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.PRESETS[preset])


def apple_model(directory: str | Path, preset: str) -> Any:
    """Apple's model of a preset's shape in fp32, with its own random weights (:func:`load_weights` gives elmtune's)."""
    config_class, model_class = load_apple_classes(directory)
    return model_class(config_class(**preset_config(preset))).float()


def save_weights(model: Any, path: str | Path) -> None:
    """Save elmtune's model's weights for :func:`load_weights`: safetensors, without the tied output head."""
    from safetensors.torch import save_file

    tied = {"lm_head.weight"} if model.config.share_input_output_layers else set()
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(weights, str(path))


def load_weights(model: Any, path: str | Path) -> None:
    """Load a safetensors file of elmtune's weights into Apple's model by parameter name (the tied head aside)."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"Apple's model and elmtune's differ in weights: {missing[:5]} {unexpected[:5]}")


def bundled_tokenizer() -> Any:
    """elmtune's bundled Llama-2 tokenizer without elmtune: BOS added, EOS not, pad id 0, right padding.

    Read from its ``tokenizer.json`` with the installed transformers, for sides that run Apple's code under another
    environment (``--apple-python``); it encodes as ``elmtune.models.load_tokenizer()`` does.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_JSON), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )

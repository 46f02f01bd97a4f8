"""The shape signature of a base model, saved with an adapter and checked before the adapter is used on a base.

Readers that never wrap a model with peft (a merge's check that an adapter fits its base) use it, so it imports
neither peft nor transformers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from torch import nn

from elmtune.adapters.config import AdapterError
from elmtune.adapters.targets import is_openelm, layer_index


def base_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _clean_param_name(name: str) -> str | None:
    """A base parameter's name with peft wrappers removed; None for adapter-owned parameters."""
    if "lora_" in name or ".modules_to_save." in name:
        return None
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def base_signature(model: nn.Module) -> dict[str, Any]:
    """Shape signature of the base model: global entries and one entry per decoder layer.

    OpenELM uses its geometry (``12/3x64:768`` = query/kv heads x head_dim : FFN width, per layer); other models a
    short hash of each layer's parameter shapes.
    """
    base = base_model_of(model)
    if is_openelm(base):
        parts = base.config.geometry.fingerprint().split(";")
        return {"fingerprint": ";".join(parts), "global": ["openelm", *parts[:3]], "layers": parts[3:]}
    shapes: dict[int | None, list[str]] = {}
    for name, param in base.named_parameters():
        clean = _clean_param_name(name)
        if clean is not None:
            shapes.setdefault(layer_index(clean), []).append(f"{clean}:{'x'.join(map(str, param.shape))}")
    config = getattr(base, "config", None)
    global_parts = [str(getattr(config, "model_type", type(base).__name__)), *sorted(shapes.get(None, []))]
    layer_ids = sorted(i for i in shapes if i is not None)
    layers = []
    for i in layer_ids:
        text = ";".join(sorted(s.split(f".{i}.", 1)[-1] for s in shapes[i]))
        layers.append(hashlib.sha1(text.encode()).hexdigest()[:12])
    fingerprint = hashlib.sha1(json.dumps([global_parts, layers]).encode()).hexdigest()[:16]
    return {"fingerprint": fingerprint, "global": global_parts, "layers": layers}


def check_signature(model: nn.Module, saved: dict[str, Any], source: str) -> None:
    """Raise if ``model``'s base signature differs from the one saved with an adapter.

    Raises:
        AdapterError: One line naming the first mismatching layer (or the global difference).
    """
    ours = base_signature(model)
    if ours["fingerprint"] == saved.get("fingerprint"):
        return
    head = f"adapter {source} was trained on a different base model"
    if ours["global"] != saved.get("global"):
        diff = [f"{a} vs {b}" for a, b in zip(saved.get("global", []), ours["global"], strict=False) if a != b]
        detail = diff[0] if diff else f"{saved.get('global')} vs {ours['global']}"
        raise AdapterError(f"{head}: {detail} (adapter's base vs this model)")
    theirs_layers, our_layers = saved.get("layers", []), ours["layers"]
    for i in range(max(len(theirs_layers), len(our_layers))):
        a = theirs_layers[i] if i < len(theirs_layers) else "absent"
        b = our_layers[i] if i < len(our_layers) else "absent"
        if a != b:
            what = " (q/kv heads x head_dim : FFN width)" if ours["global"][0] == "openelm" else ""
            raise AdapterError(f"{head}: layer {i} is {a} there but {b} here{what}")
    raise AdapterError(f"{head}: fingerprint {saved.get('fingerprint')} vs {ours['fingerprint']}")


__all__ = ["base_model_of", "base_signature", "check_signature"]

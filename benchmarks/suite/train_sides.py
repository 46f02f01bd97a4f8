"""Training-step sides: elmtune LoRA/DoRA, a same-shape transformers Llama + peft, Apple's code + peft, the matmul peak.

Every side builds its model from random weights, runs ``warmup`` untimed optimizer steps (forward, backward, AdamW)
on one fixed batch of ``batch x seq`` random tokens and reports its fastest of ``steps`` timed steps.
"""

from __future__ import annotations

import warnings
from typing import Any

from suite.measure import best_of, peak_rss_mib, set_threads
from suite.settings import Settings
from suite.shapes import llama_model, preset_geometry, training_flops_per_token

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
APPLE_TARGETS = ("qkv_proj", "out_proj", "proj_1", "proj_2")
MATMUL_SIZE = 2048


def elmtune_adapted(settings: Settings, method: str = "lora", dropout: float | None = None) -> Any:
    """The preset with elmtune's adapter (``method`` lora or dora) on ``settings.targets``, in training mode."""
    from elmtune.adapters import AdapterConfig, apply_adapter
    from elmtune.models import load_model

    dropout = settings.dropout if dropout is None else dropout
    config = AdapterConfig(r=settings.r, alpha=settings.r, dropout=dropout, targets=(settings.targets,), method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_adapter(load_model(settings.preset), config).train()


def _peft(model: Any, settings: Settings, targets: tuple[str, ...], embedding: str) -> Any:
    """Stock peft LoRA on ``targets`` (and the embedding when the recipe adapts it), as a user would set it up."""
    from peft import LoraConfig, get_peft_model

    modules = list(targets) + ([embedding] if settings.targets == "apple" else [])
    config = LoraConfig(r=settings.r, lora_alpha=settings.r, lora_dropout=settings.dropout, target_modules=modules)
    return get_peft_model(model, config).train()


def llama_adapted(settings: Settings) -> Any:
    """The same-shape transformers ``LlamaForCausalLM`` (fp32, random weights) with peft LoRA on q/k/v/o and the MLP."""
    return _peft(llama_model(settings.preset), settings, LLAMA_TARGETS, "embed_tokens")


def apple_adapted(settings: Settings) -> Any:
    """Apple's modeling code of the preset's shape (fp32, random weights) with peft LoRA on Apple's projections."""
    import torch

    from suite.apple_code import apple_model

    torch.manual_seed(0)
    return _peft(apple_model(settings.apple_code, settings.preset), settings, APPLE_TARGETS, "token_embeddings")


def adapter_matmul_weights(model: Any) -> int:
    """Trainable matmul weights: every trainable parameter but the embedding LoRA's A (a lookup)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_embedding_A" not in n)


def step_metrics(settings: Settings, model: Any, count_flops: bool = True) -> dict[str, Any]:
    """Time optimizer steps of ``model`` on one random batch; tokens/s, GFLOP/s (OpenELM's count) and peak RSS.

    ``count_flops`` False leaves GFLOP/s out (Apple's side: counting reads elmtune's geometry, and that side may run
    without elmtune, under ``--apple-python``).
    """
    import torch

    set_threads(settings)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (settings.batch, settings.seq), generator=generator)  # (B, T)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = best_of(settings, step)
    tokens_per_s = settings.batch * settings.seq / seconds
    metrics = {"step_seconds": seconds, "tokens_per_s": tokens_per_s, "peak_rss_mib": peak_rss_mib()}
    info = {"adapter_parameters": sum(p.numel() for p in params)}
    if count_flops:
        adapter = adapter_matmul_weights(model)
        flops = training_flops_per_token(preset_geometry(settings.preset), settings.seq, adapter)
        metrics["gflops_per_s"] = tokens_per_s * flops / 1e9
        info["flops_per_token"] = flops
    return {"metrics": metrics, "info": info}


def dora_variant(settings: Settings, variant: str) -> dict[str, Any]:
    """One step kind of ``dora_vs_lora.py`` (lora, dora or dora-peft) at ``settings.dora_dropout``."""
    from dora_vs_lora import build

    from elmtune.models import load_model

    cfg = {"r": settings.r, "alpha": settings.r, "dropout": settings.dora_dropout, "targets": settings.targets}
    return step_metrics(settings, build(load_model(settings.preset), variant, cfg, copy_base=False).train())


def matmul_peak(settings: Settings) -> dict[str, Any]:
    """GFLOP/s of a 2048 x 2048 fp32 matmul on this process's threads: the peak the step's MFU is measured against."""
    import torch

    set_threads(settings)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)  # (n, n)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)  # (n, n)
    out = torch.empty(MATMUL_SIZE, MATMUL_SIZE)  # (n, n)
    repeats = Settings(steps=max(5, settings.steps), warmup=2, clock=settings.clock)
    seconds = best_of(repeats, lambda: torch.mm(a, b, out=out))
    return {"metrics": {"gflops_per_s": 2 * MATMUL_SIZE**3 / seconds / 1e9, "seconds": seconds}, "info": {}}


def dpo_kind(settings: Settings, kind: str) -> dict[str, Any]:
    """One step kind of ``dpo_vs_sft.py`` (sft, dpo, dpo-precomputed, dpo-separate): 2N = ``batch`` sequences."""
    import argparse

    from dpo_vs_sft import build_steps

    set_threads(settings)
    args = argparse.Namespace(
        preset=settings.preset,
        pairs=max(1, settings.batch // 2),
        seq=settings.seq,
        r=settings.r,
        targets=settings.targets,
        dropout=0.0,
        device="cpu",
    )
    steps, _ = build_steps(args)
    step = steps[kind]
    seconds = best_of(settings, step)
    return {"metrics": {"step_seconds": seconds, "peak_rss_mib": peak_rss_mib()}, "info": {"pairs": args.pairs}}

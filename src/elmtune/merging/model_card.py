"""The model card (README.md) of a merged checkpoint, rendered from its :class:`MergeReport`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from elmtune.merging.report import MergeReport
from elmtune.merging.verify import VerifyResult
from elmtune.model_cards import bullet_lines, front_matter
from elmtune.recipe_yaml import load_recipe_yaml


def training_data(adapter_dir: Path) -> dict[str, Any] | None:
    """The ``data`` section of the training run that produced an adapter, when its ``config.yaml`` is nearby.

    elmtune writes ``config.yaml`` at the run root (``run/final/`` is the adapter) and inside each checkpoint
    (``checkpoints/step-N/adapter/``).
    """
    for candidate in (adapter_dir, adapter_dir.parent, adapter_dir.parent.parent.parent):
        path = candidate / "config.yaml"
        if path.is_file():
            try:
                data = load_recipe_yaml(path)
            except yaml.YAMLError:
                return None
            section = data.get("data") if isinstance(data, dict) else None
            return section if isinstance(section, dict) else None
    return None


def _adapter_lines(report: MergeReport) -> list[str]:
    adapter = report.adapter
    settings = adapter.config or {}
    lines = [f"- directory: `{adapter.path}`", f"- method: {adapter.method}"]
    if settings:
        for key in ("r", "alpha", "dropout", "targets", "layers", "rank_strategy", "use_rslora", "init", "train_norms"):
            if key in settings:
                lines.append(f"- {key}: {settings[key]}")
    else:
        peft = adapter.peft
        lines += [f"- {k}: {peft[k]}" for k in ("r", "lora_alpha", "target_modules", "use_rslora") if k in peft]
    if adapter.trained_on and adapter.trained_on != report.base:
        lines.append(f"- trained on base: `{adapter.trained_on}` (same geometry)")
    return lines


def _check_lines(verification: VerifyResult | None) -> list[str]:
    if verification is None:
        return ["Skipped (`--no-verify`): this merge was **not** checked against the unmerged adapter."]
    budget, comparison = verification.budget, verification.comparison
    rows = [
        ("max abs logit difference", f"{comparison.max_abs_diff:.3g}", budget.max_abs_diff),
        ("mean KL (nats)", f"{comparison.mean_kl:.3g}", budget.max_kl),
        ("top-1 agreement", f"{comparison.top1_agreement:.2%}", budget.min_top1),
    ]
    lines = [
        f"Probe of {comparison.positions} token positions, fp32 arithmetic; reference: {verification.reference}.",
        "",
        "| metric | value | budget |",
        "|---|---|---|",
    ]
    for name, value, limit in rows:
        shown = "-" if limit is None else (f">= {limit:.0%}" if name.startswith("top-1") else f"<= {limit:g}")
        lines.append(f"| {name} | {value} | {shown} |")
    lines += ["", f"Result: {'passed' if verification.passed else 'FAILED'}."]
    head = verification.head_change
    if head is not None:
        lines += [
            "",
            "Because the tied output head now reads the adapted embedding, this model differs from the unmerged "
            f"adapter (base head) by max |logit diff| {head.max_abs_diff:.3g}, mean KL {head.mean_kl:.3g}, "
            f"top-1 agreement {head.top1_agreement:.2%} on the probe. Merge with `--untie-embeddings` to "
            "reproduce the unmerged adapter exactly.",
        ]
    return lines


def _description(report: MergeReport) -> str:
    if report.model_type == "openelm":
        return (
            f"OpenELM `{report.base}` with an adapter merged into its weights by elmtune {report.elmtune_version}. "
            "It loads like any OpenELM checkpoint (Apple's state-dict keys, `config.json` with per-layer lists)."
        )
    return (
        f"`{report.base}` ({report.model_type}) with an adapter merged into its weights by elmtune "
        f"{report.elmtune_version}. It loads with `AutoModelForCausalLM.from_pretrained` (the base's keys and config)."
    )


def render_model_card(report: MergeReport) -> str:
    """README.md text for a merged checkpoint, from its merge report."""
    base = report.base
    openelm = report.model_type == "openelm"
    front = {
        "base_model": base,
        "library_name": "transformers",
        "tags": [report.model_type, "elmtune", "merged", "lora"],
    }
    if report.adapter.method == "dora":
        front["tags"][-1] = "dora"
    lines = [
        front_matter(front),
        "",
        f"# {Path(report.output).name}",
        "",
        _description(report),
        "",
        "## Adapter",
        "",
        *_adapter_lines(report),
        "",
        "## Training data",
        "",
    ]
    data = report.training_data
    if data:
        lines += bullet_lines(list(data.items()))
    else:
        lines.append("Not recorded with the adapter.")
    lines += [
        "",
        "## Merge",
        "",
        f"- dtype: {report.dtype} (base: {report.base_dtype}); updates computed in fp32, rounded once",
        f"- output head: {report.head.note}",
        f"- mode: {'low-memory (tensor by tensor from the base files)' if report.low_memory else 'in-memory'}",
        f"- tensors changed: {len(report.changed_tensors)}",
        *(
            [
                f"- base quantisation: the adapter was trained on a {report.base_quantization} base; its Linear "
                f"weights were dequantised to fp32 (dequant(quant(W))) before the update, reproducing the trained model"
            ]
            if report.base_quantization
            else []
        ),
        "",
        "## Merge check",
        "",
        *_check_lines(report.verification),
        "",
        "## Use",
        "",
        "```python",
        *(["import elmtune  # registers OpenELM with transformers; no remote code runs"] if openelm else []),
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        "```",
        "",
    ]
    if openelm:
        lines.append(
            "Export to llama.cpp with `elmtune export DIR --format gguf -o model.gguf`"
            + (" (needs a tied head)." if not report.head.tied else ".")
        )
    lines.append("")
    return "\n".join(lines)


__all__ = ["render_model_card", "training_data"]

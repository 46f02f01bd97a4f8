"""The model card (README.md) of a merged checkpoint, generated from its merge report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def training_data(adapter_dir: Path) -> dict[str, Any] | None:
    """The ``data`` section of the training run that produced an adapter, when its ``config.yaml`` is nearby.

    elmtune writes ``config.yaml`` at the run root (``run/final/`` is the adapter) and inside each checkpoint
    (``checkpoints/step-N/adapter/``).
    """
    for candidate in (adapter_dir, adapter_dir.parent, adapter_dir.parent.parent.parent):
        path = candidate / "config.yaml"
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                return None
            section = data.get("data") if isinstance(data, dict) else None
            return section if isinstance(section, dict) else None
    return None


def _adapter_lines(report: dict[str, Any]) -> list[str]:
    adapter = report["adapter"]
    settings = adapter.get("config") or {}
    lines = [f"- directory: `{adapter['path']}`", f"- method: {adapter['method']}"]
    if settings:
        for key in ("r", "alpha", "dropout", "targets", "layers", "rank_strategy", "use_rslora", "init", "train_norms"):
            if key in settings:
                lines.append(f"- {key}: {settings[key]}")
    else:
        peft = adapter.get("peft", {})
        lines += [f"- {k}: {peft[k]}" for k in ("r", "lora_alpha", "target_modules", "use_rslora") if k in peft]
    if adapter.get("trained_on") and adapter["trained_on"] != report["base"]:
        lines.append(f"- trained on base: `{adapter['trained_on']}` (same geometry)")
    return lines


def _check_lines(verification: dict[str, Any] | None) -> list[str]:
    if verification is None:
        return ["Skipped (`--no-verify`): this merge was **not** checked against the unmerged adapter."]
    budget = verification["budget"]
    rows = [
        ("max abs logit difference", f"{verification['max_abs_diff']:.3g}", budget.get("max_abs_diff")),
        ("mean KL (nats)", f"{verification['mean_kl']:.3g}", budget.get("max_kl")),
        ("top-1 agreement", f"{verification['top1_agreement']:.2%}", budget.get("min_top1")),
    ]
    lines = [
        f"Probe of {verification['positions']} token positions, fp32 arithmetic; reference: "
        f"{verification['reference']}.",
        "",
        "| metric | value | budget |",
        "|---|---|---|",
    ]
    for name, value, limit in rows:
        shown = "-" if limit is None else (f">= {limit:.0%}" if name.startswith("top-1") else f"<= {limit:g}")
        lines.append(f"| {name} | {value} | {shown} |")
    lines += ["", f"Result: {'passed' if verification['passed'] else 'FAILED'}."]
    head = verification.get("head_change_vs_unmerged")
    if head is not None:
        lines += [
            "",
            "Because the tied output head now reads the adapted embedding, this model differs from the unmerged "
            f"adapter (base head) by max |logit diff| {head['max_abs_diff']:.3g}, mean KL {head['mean_kl']:.3g}, "
            f"top-1 agreement {head['top1_agreement']:.2%} on the probe. Merge with `--untie-embeddings` to "
            "reproduce the unmerged adapter exactly.",
        ]
    return lines


def render_model_card(report: dict[str, Any]) -> str:
    """README.md text for a merged checkpoint, from its ``merge_report.json`` content."""
    base = report["base"]
    embeddings = report["embeddings"]
    front = {"base_model": base, "library_name": "transformers", "tags": ["openelm", "elmtune", "merged", "lora"]}
    if report["adapter"]["method"] == "dora":
        front["tags"][-1] = "dora"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {Path(report['output']).name}",
        "",
        f"OpenELM `{base}` with an adapter merged into its weights by elmtune {report['elmtune_version']}. It loads "
        "like any OpenELM checkpoint (Apple's state-dict keys, `config.json` with per-layer lists).",
        "",
        "## Adapter",
        "",
        *_adapter_lines(report),
        "",
        "## Training data",
        "",
    ]
    data = report.get("training_data")
    if data:
        lines += [f"- {key}: {value}" for key, value in data.items() if value not in (None, [], {})]
    else:
        lines.append("Not recorded with the adapter.")
    lines += [
        "",
        "## Merge",
        "",
        f"- dtype: {report['dtype']} (base: {report['base_dtype']}); updates computed in fp32, rounded once",
        f"- output head: {embeddings['note']}",
        f"- mode: {'low-memory (tensor by tensor from the base files)' if report['low_memory'] else 'in-memory'}",
        f"- tensors changed: {len(report['changed_tensors'])}",
        "",
        "## Merge check",
        "",
        *_check_lines(report.get("verification")),
        "",
        "## Use",
        "",
        "```python",
        "import elmtune  # registers OpenELM with transformers; no remote code runs",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        "```",
        "",
        "Export to llama.cpp with `elmtune export DIR --format gguf -o model.gguf`"
        + (" (needs a tied head)." if not embeddings["tied"] else "."),
        "",
    ]
    return "\n".join(lines)


__all__ = ["render_model_card", "training_data"]

"""The model card (``README.md``) of a run's ``final/`` adapter: Hub metadata and the training summary.

The card is rendered from what the run recorded: ``config.yaml`` (the run's settings), ``metrics.jsonl`` (the last
losses and preference metrics), ``data_report.json`` (the data after tokenisation: examples kept, truncated and
dropped, tokens), the adapter's own metadata, and the trained model (its trainable parameters). Its
front matter holds ``base_model``, ``library_name`` (``peft``), ``pipeline_tag`` (``text-generation``), ``tags`` and,
when the data came from the Hugging Face Hub, ``datasets``. A checkpoint's ``adapter/`` is resume state and gets no
card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from elmtune.finetune.data_report import DataReport, read_data_report
from elmtune.finetune.run_log import read_metrics
from elmtune.model_cards import CARD_FILE, bullet_lines, front_matter
from elmtune.recipe_yaml import load_recipe_yaml

_OBJECTIVE_SETTINGS = {
    "sft": ("z_loss",),
    "dpo": ("preference_loss", "beta", "label_smoothing", "precompute_reference"),
}
_OPTIMIZER_SETTINGS = ("batch_size", "grad_accum", "lr", "schedule", "warmup", "weight_decay", "max_grad_norm", "seed")
_PREFERENCE_METRICS = ("rewards/accuracies", "rewards/margins")
_METHOD_NAMES = {"lora": "LoRA", "dora": "DoRA"}


@dataclass(frozen=True)
class FinalMetrics:
    """The last value of each metric a run logged (None when it was never logged).

    Attributes:
        step: The last optimizer step with a row.
        epoch: Epochs of the training data seen by that step.
        train_loss: The last training loss.
        eval_loss: The last validation loss.
        reward_accuracy: The last DPO reward accuracy (validation when there was one, else training).
        reward_margin: The last DPO reward margin (same choice).
    """

    step: int | None
    epoch: float | None
    train_loss: float | None
    eval_loss: float | None
    reward_accuracy: float | None
    reward_margin: float | None


@dataclass(frozen=True)
class AdapterCardFacts:
    """Everything the adapter card shows.

    Attributes:
        name: The card's title (the run directory's name).
        run_config: The run's settings as written to ``config.yaml`` (``model``, ``adapter``, ``data``, ``train``).
        trainable_parameters: Parameters the run optimised.
        metrics: The final metrics.
        data_report: The data after loading and tokenisation (None: the run recorded none).
    """

    name: str
    run_config: dict[str, Any]
    trainable_parameters: int
    metrics: FinalMetrics
    data_report: DataReport | None = None


def final_metrics(rows: list[dict[str, Any]]) -> FinalMetrics:
    """The last value of each metric in a run's ``metrics.jsonl`` rows."""

    def last(key: str) -> Any:
        values = [row[key] for row in rows if row.get(key) is not None]
        return values[-1] if values else None

    def preference(key: str) -> float | None:
        value = last(f"eval_{key}")
        return value if value is not None else last(key)

    return FinalMetrics(
        step=last("step"),
        epoch=last("epoch"),
        train_loss=last("loss"),
        eval_loss=last("eval_loss"),
        reward_accuracy=preference(_PREFERENCE_METRICS[0]),
        reward_margin=preference(_PREFERENCE_METRICS[1]),
    )


def is_hub_dataset(source: str) -> bool:
    """Whether a data source names a Hugging Face Hub dataset (``owner/name``) rather than a local file or folder."""
    return (
        not Path(source).exists()
        and not source.startswith((".", "/", "~"))
        and source.count("/") == 1
        and not Path(source).suffix
    )


def card_metadata(facts: AdapterCardFacts) -> dict[str, Any]:
    """The card's front matter: ``base_model``, ``library_name``, ``pipeline_tag``, ``tags`` and maybe ``datasets``."""
    config = facts.run_config
    adapter, data, train = config.get("adapter", {}), config.get("data", {}), config.get("train", {})
    base = str(config.get("model"))
    method = str(adapter.get("method", "lora"))
    tags = ["elmtune", method, *(["openelm"] if _is_openelm(base) else []), str(train.get("objective", "sft"))]
    fields: dict[str, Any] = {
        "base_model": base,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": tags,
    }
    source = str(data.get("path", ""))
    if is_hub_dataset(source):
        fields["datasets"] = [source]
    return fields


def _is_openelm(base: str) -> bool:
    """Whether the base is an OpenELM preset, hub id or OpenELM checkpoint directory."""
    from elmtune.models.presets import preset_name

    if preset_name(base) is not None or "openelm" in base.lower():
        return True
    config = Path(base) / "config.json"
    return config.is_file() and '"openelm"' in config.read_text(encoding="utf-8")


def _number(value: float | None, digits: int = 4) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _training_lines(facts: AdapterCardFacts) -> list[str]:
    config, metrics = facts.run_config, facts.metrics
    train = config.get("train", {})
    objective = str(train.get("objective", "sft"))
    settings = ", ".join(f"{key} {train[key]}" for key in _OBJECTIVE_SETTINGS.get(objective, ()) if key in train)
    optimizer = ", ".join(f"{key} {train[key]}" for key in _OPTIMIZER_SETTINGS if key in train)
    return bullet_lines(
        [
            ("objective", f"{objective} ({settings})" if settings else objective),
            ("started from adapter", config.get("start_from")),
            ("optimisation", optimizer),
            ("steps", metrics.step),
            ("epochs of the training data", metrics.epoch),
            ("final train loss", _number(metrics.train_loss)),
            ("final validation loss", _number(metrics.eval_loss)),
            ("final reward accuracy", _number(metrics.reward_accuracy)),
            ("final reward margin", _number(metrics.reward_margin)),
        ]
    )


def _usage_lines(base: str, openelm: bool) -> list[str]:
    from elmtune.models.presets import hub_id, preset_name

    preset = preset_name(base)
    loadable = (hub_id(preset) if preset is not None else None) or base  # transformers needs a hub id or a path
    return [
        "With peft:",
        "",
        "```python",
        *(["import elmtune  # registers OpenELM with transformers; no remote code runs"] if openelm else []),
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{loadable}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/directory")',
        "```",
        "",
        "With elmtune (adapters on sub-projections of fused modules included):",
        "",
        "```bash",
        f'elmtune generate {base} --adapter path/to/this/directory --prompt "..."',
        f"elmtune merge {base} path/to/this/directory -o merged/",
        "```",
    ]


def _data_lines(report: DataReport | None) -> list[str]:
    """The data section's counts after loading and tokenisation (none without a report)."""
    if report is None:
        return []
    unit = "pairs" if report.kind == "preference" else "examples"
    items = "packs" if report.packed else unit
    skipped = f"{report.invalid} invalid" + (
        f", {report.unusable_pairs} without a usable pair" if report.kind == "preference" else ""
    )
    dropped = f"{report.dropped_overlong} too long, {report.dropped_no_target} with no target token left" + (
        f", {report.dropped_identical} identical pairs" if report.kind == "preference" else ""
    )
    counts = [
        ("rows read", report.rows),
        ("rows skipped", skipped),
        (f"{unit} kept after tokenisation", f"{report.kept} of {report.examples}"),
        (f"{unit} truncated to max length", report.truncated),
        (f"{unit} dropped", dropped),
        ("tokens", f"{report.tokens} ({report.target_tokens} trained targets)"),
        ("longest before truncation", f"{report.longest} tokens"),
        (f"training {items}", report.training_items),
        (f"held-out {items}", report.held_out),
    ]
    return ["", "### After tokenisation", "", *bullet_lines(counts)]


def render_adapter_card(facts: AdapterCardFacts) -> str:
    """README.md text for a trained adapter directory."""
    config = facts.run_config
    adapter, data = config.get("adapter", {}), config.get("data", {})
    base = str(config.get("model"))
    method = str(adapter.get("method", "lora"))
    adapter_keys = ("method", "r", "alpha", "dropout", "targets", "layers", "rank_strategy", "use_rslora", "init")
    lines = [
        front_matter(card_metadata(facts)),
        "",
        f"# {facts.name}",
        "",
        f"A {_METHOD_NAMES.get(method, method)} adapter for `{base}`, trained with elmtune.",
        "",
        "## Adapter",
        "",
        *bullet_lines([(key, adapter.get(key)) for key in adapter_keys]),
        f"- trainable parameters: {facts.trainable_parameters:,}",
        "",
        "## Training",
        "",
        *_training_lines(facts),
        "",
        "## Data",
        "",
        *bullet_lines([(key, data.get(key)) for key in ("path", "format", "split", "subset", "template")]),
        *bullet_lines([("rows used (limit)", data.get("limit")), ("held out", data.get("validation_size") or None)]),
        f"- max length: {data.get('max_length')} tokens",
        *_data_lines(facts.data_report),
        "",
        "## Use",
        "",
        *_usage_lines(base, _is_openelm(base)),
        "",
        "## How it was made",
        "",
        "`elmtune train --config config.yaml`, with this `config.yaml`:",
        "",
        "```yaml",
        *_config_yaml(config),
        "```",
        "",
    ]
    return "\n".join(lines)


def _config_yaml(config: dict[str, Any]) -> list[str]:
    import yaml

    return yaml.safe_dump(config, sort_keys=False).rstrip().splitlines()


def write_adapter_card(adapter_dir: Path, run_dir: Path, model: nn.Module) -> Path:
    """Write ``adapter_dir/README.md`` from the run's ``config.yaml`` and ``metrics.jsonl`` and the trained model.

    Args:
        adapter_dir: The directory the adapter was just saved in.
        run_dir: The run directory (``config.yaml``, ``metrics.jsonl``, ``data_report.json``).
        model: The trained model (its parameters with ``requires_grad`` are counted).

    Returns:
        The card's path.
    """
    config_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    run_config = load_recipe_yaml(config_path) if config_path.is_file() else {}
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    facts = AdapterCardFacts(
        run_dir.resolve().name, run_config, trainable, final_metrics(rows), read_data_report(run_dir)
    )
    path = adapter_dir / CARD_FILE
    path.write_text(render_adapter_card(facts), encoding="utf-8")
    return path


__all__ = [
    "AdapterCardFacts",
    "FinalMetrics",
    "card_metadata",
    "final_metrics",
    "is_hub_dataset",
    "render_adapter_card",
    "write_adapter_card",
]

"""Per-layer ranks and trainable parameters of an adapter on a model, without loading weights (``elmtune inspect``).

The model is built on the meta device (shapes only) from a preset, a local directory or a cached hub config, and the
adapter is applied from a YAML config or attached from a saved adapter directory; the report then comes from the
same code that training uses.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from rich.table import Table

from elmtune.adapters.apply import apply_adapter
from elmtune.adapters.config import AdapterConfig, AdapterError
from elmtune.adapters.io import attach_adapter_from_dir
from elmtune.adapters.state import ParameterReport, trainable_parameter_report
from elmtune.models.describe import build_meta_model


def adapter_report(model_name: str, config_or_dir: str | Path) -> ParameterReport:
    """The :class:`ParameterReport` of an adapter (YAML config or saved directory) on a model, on the meta device.

    Raises:
        AdapterError: Unreadable config, targets that match nothing, or a saved adapter for another base geometry.
        ModelNotFoundError: Unknown model.
    """
    model = build_meta_model(model_name)
    source = Path(config_or_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if source.is_dir():
            peft_model, _ = attach_adapter_from_dir(model, source)
        else:
            if not source.is_file():
                raise AdapterError(f"{source} is neither an adapter config file nor an adapter directory")
            cfg = AdapterConfig.from_yaml(source)
            # Data/SVD-based initialisations cannot run on shapes alone; they do not change any count.
            peft_model = apply_adapter(model, dataclasses.replace(cfg, init="default"))
    return trainable_parameter_report(peft_model)


def report_table(report: ParameterReport, title: str = "") -> Table:
    """The adapter's ranks and trainable parameters as a rich table.

    One row per layer with the rank of each adapted module kind and the layer's trainable parameters, rows for modules
    outside the blocks, and the totals.

    Args:
        report: The report to show (see :func:`adapter_report`).
        title: Table title (none when empty).

    Returns:
        The table.
    """
    by_layer = report.by_layer()
    kinds = list(dict.fromkeys(m.kind for m in report.modules if m.layer is not None and m.rank))
    table = Table(title=title or None)
    table.add_column("layer")
    for kind in kinds:
        table.add_column(f"r {kind}", justify="right", no_wrap=True)
    has_norms = report.norms > 0
    if has_norms:
        table.add_column("norms", justify="right")
    table.add_column("trainable", justify="right", no_wrap=True)
    blank = ("",) * (len(kinds) + has_norms)
    for layer, modules in by_layer.items():
        if layer is None:
            continue
        ranks = {m.kind: m.rank for m in modules if m.rank}
        norms = (f"{sum(m.other for m in modules):,}",) if has_norms else ()
        cells = [str(ranks[k]) if k in ranks else "-" for k in kinds]
        table.add_row(str(layer), *cells, *norms, f"{sum(m.trainable for m in modules):,}")
    table.add_section()
    for m in by_layer.get(None, []):
        label = f"{m.name} (r {m.rank})" if m.rank else m.name
        table.add_row(label, *blank, f"{m.trainable:,}")
    total = f"{report.trainable:,} ({100 * report.fraction:.2f}% of {report.base_parameters:,})"
    table.add_row("total", *blank, total, style="bold")
    for label, value in (
        ("of which embedding", report.embedding),
        ("of which DoRA magnitudes", report.magnitude),
        ("of which norms", report.norms),
    ):
        if value:
            table.add_row(label, *blank, f"{value:,}")
    return table


def describe_adapter(model_name: str, config_or_dir: str | Path) -> Table:
    """The ``elmtune inspect MODEL --adapter CONFIG_OR_DIR`` table (see :func:`adapter_report`)."""
    report = adapter_report(model_name, config_or_dir)
    return report_table(report, title=f"adapter {config_or_dir} on {model_name}")


__all__ = ["adapter_report", "describe_adapter", "report_table"]

"""A memory plan as a rich table: one row per component, the total and the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from elmtune.finetune.memory_plan import GB

if TYPE_CHECKING:
    from elmtune.finetune.config import RunConfig
    from elmtune.finetune.memory_plan import MemoryPlan

WHAT = {
    "weights": "frozen base weights ({base})",
    "adapter": "trainable parameters (fp32)",
    "gradients": "their gradients (fp32)",
    "optimizer": "AdamW moments (2 x fp32)",
    "activations": "kept for the backward pass ({checkpointing})",
    "logits": "loss logits, log-softmax, gradients",
    "workspace": "one layer's activation gradients",
    "allocator": "freed memory the CPU heap keeps",
    "runtime": "process / device context",
}
"""Component -> what it holds (formatted with the run's settings)."""


def plan_table(plan: MemoryPlan, config: RunConfig) -> Table:
    """The components of ``plan`` with their sizes and shares, then the total against the device's memory.

    Args:
        plan: The memory plan.
        config: The run configuration it was made for (for the title and the notes).

    Returns:
        The table.
    """
    train, data = config.train, config.data
    title = (
        f"{config.model}: {train.objective}, {plan.sequences_per_micro_batch} x {data.max_length} tokens per "
        f"micro-batch, {train.grad_accum} micro-batch(es) = {plan.tokens_per_step:,} tokens per step, "
        f"{plan.precision} compute"
    )
    table = Table(title=title)
    table.add_column("component")
    table.add_column("holds")
    table.add_column("GB", justify="right")
    table.add_column("share", justify="right")
    notes = {
        "base": plan.base_dtype,
        "checkpointing": "checkpointed" if train.gradient_checkpointing else "no checkpointing",
    }
    total = plan.total
    for name, size in plan.components():
        if name == "allocator" and not size:
            continue  # a GPU plan: the CPU heap's row does not apply
        table.add_row(name, WHAT[name].format(**notes), f"{size / GB:.3f}", f"{100 * size / total:.0f}%")
    table.add_section()
    verdict = "fits" if plan.fits else "does not fit"
    table.add_row("total", f"peak; {verdict} in {plan.device.describe()}", f"{total / GB:.3f}", "", style="bold")
    return table


__all__ = ["plan_table"]

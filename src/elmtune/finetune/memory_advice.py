"""What to change when a run does not fit its device, each change with its own predicted peak."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from elmtune.finetune.memory_plan import GB, DeviceBudget, MemoryPlan, plan_memory, resolved_precision

if TYPE_CHECKING:
    from elmtune.finetune.config import RunConfig
    from elmtune.finetune.memory_counts import ParameterCounts


@dataclass(frozen=True)
class Change:
    """One change to a run's settings and the plan it gives.

    Attributes:
        flags: The ``elmtune train`` flags that make the change.
        plan: The predicted plan with the change.
    """

    flags: str
    plan: MemoryPlan

    def describe(self) -> str:
        """``--gradient-checkpointing: 7.1 GB (fits)``."""
        verdict = "fits" if self.plan.fits else "does not fit"
        return f"{self.flags}: {self.plan.total / GB:.2f} GB ({verdict})"


def _with(config: RunConfig, section: str, **values: object) -> RunConfig:
    """``config`` with fields of one section replaced."""
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})


def candidate_changes(config: RunConfig, device: DeviceBudget) -> list[tuple[str, RunConfig]]:
    """The changes worth trying, cumulative where that helps: (flags, changed config)."""
    train, data = config.train, config.data
    changes: list[tuple[str, RunConfig]] = []
    if not train.gradient_checkpointing:
        changes.append(("--gradient-checkpointing", _with(config, "train", gradient_checkpointing=True)))
    if train.batch_size > 1:
        smaller = max(1, train.batch_size // 4)
        accum = train.grad_accum * -(-train.batch_size // smaller)
        flags = f"--batch-size {smaller} --grad-accum {accum}"
        changes.append((flags, _with(config, "train", batch_size=smaller, grad_accum=accum)))
    if data.max_length > 256:
        shorter = max(256, data.max_length // 2)
        changes.append((f"--max-length {shorter}", _with(config, "data", max_length=shorter)))
    _, base = resolved_precision(config, device)
    if base == "fp32":
        changes.append(("--base-dtype bf16", _with(config, "train", base_dtype="bf16")))
    if base not in ("nf4",):
        changes.append(("--base-dtype nf4", _with(config, "train", base_dtype="nf4")))
    if changes:
        every = config
        for _, changed in changes[:2]:
            every = dataclasses.replace(every, train=dataclasses.replace(every.train, **_train_delta(config, changed)))
        if len(changes) > 1:
            changes.append((f"{changes[0][0]} {changes[1][0]}", every))
    return changes


def _train_delta(before: RunConfig, after: RunConfig) -> dict[str, object]:
    """The train fields that differ between two configs."""
    return {
        field.name: getattr(after.train, field.name)
        for field in dataclasses.fields(after.train)
        if getattr(after.train, field.name) != getattr(before.train, field.name)
    }


def plan_with_advice(config: RunConfig, device: DeviceBudget, counts: ParameterCounts) -> MemoryPlan:
    """:func:`~elmtune.finetune.memory_plan.plan_memory`, plus what to change when the run does not fit.

    Args:
        config: The run configuration.
        device: The device and its memory.
        counts: The model's parameter counts.

    Returns:
        The plan; its ``advice`` lists each candidate change with its predicted total (empty when it fits).
    """
    plan = plan_memory(config, device, counts)
    if plan.fits:
        return plan
    changes = [
        Change(flags, plan_memory(changed, device, counts)) for flags, changed in candidate_changes(config, device)
    ]
    changes.sort(key=lambda change: change.plan.total)
    return dataclasses.replace(plan, advice=tuple(change.describe() for change in changes))


__all__ = ["Change", "candidate_changes", "plan_with_advice"]

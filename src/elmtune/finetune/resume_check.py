"""What ``--resume`` may change: the settings that define a run must equal the stored ones.

A checkpoint stores the full run config (``config.yaml``) and, in ``trainer_state.json``, the number of processes,
the planned number of steps and a sha256 fingerprint of the training data. On resume every setting is compared with
the given one except those in :data:`MAY_CHANGE` (how long to train and how often to log, evaluate and save, where the
run directory is, the device, memory- and speed-only options such as gradient checkpointing, padding-free batches
and shared prompts, and the tolerance for non-finite steps). A run that would continue with other settings is
refused with one line naming each difference, before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elmtune.errors import ElmtuneError
from elmtune.finetune.checkpoint import TrainerState

MAY_CHANGE = frozenset(
    {
        "train.max_steps",  # may only grow: checked against the planned total by check_planned_steps
        "train.epochs",
        "train.log_every",
        "train.eval_every",
        "train.save_every",
        "train.keep_last",
        "train.output_dir",
        "train.device",
        "train.gradient_checkpointing",
        "data.padding_free",  # the same batches and loss, computed without padding
        "train.share_prompt",  # the same pairs and loss, each pair's prompt computed once
        "train.skip_nonfinite",
        "train.report_to",
    }
)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _same_path(stored: Any, given: Any) -> bool:
    if stored == given:
        return True
    if not isinstance(stored, str) or not isinstance(given, str):
        return False
    return Path(stored).exists() and Path(given).exists() and Path(stored).resolve() == Path(given).resolve()


def differing_settings(
    stored: Mapping[str, Any],
    given: Mapping[str, Any],
    state: TrainerState,
    *,
    num_processes: int,
    data_sha256: str | None,
) -> list[str]:
    """Every run-defining setting whose given value differs from the stored one, as ``"key stored -> given"``.

    Args:
        stored: The checkpoint's run config (as in its ``config.yaml``).
        given: The run config given now (``RunConfig.to_dict()``).
        state: The checkpoint's trainer state (processes, data fingerprint).
        num_processes: Processes of this launch.
        data_sha256: Fingerprint of the data given now (None when it cannot be taken).

    Returns:
        The differences, in config order (empty when the run may continue).
    """
    old, new = _flatten(stored), _flatten(given)
    differences = []
    for key in new:
        if key in MAY_CHANGE or key not in old:  # a setting newer than the checkpoint: nothing to compare
            continue
        same = _same_path(old[key], new[key]) if key in ("data.path", "start_from") else old[key] == new[key]
        if not same:
            differences.append(f"{key} {old[key]} -> {new[key]}")
    shrunk = old.get("train.max_steps") is not None and new.get("train.max_steps") is not None
    if shrunk and new["train.max_steps"] < old["train.max_steps"]:
        differences.append(f"train.max_steps {old['train.max_steps']} -> {new['train.max_steps']} (may only grow)")
    if state.data_sha256 and data_sha256 and state.data_sha256 != data_sha256:
        differences.append(f"data content sha256 {state.data_sha256[:12]} -> {data_sha256[:12]}")
    if state.num_processes and state.num_processes != num_processes:
        differences.append(f"processes {state.num_processes} -> {num_processes}")
    return differences


def check_same_run(run_dir: Path, differences: list[str]) -> None:
    """Refuse to resume when ``differences`` (from :func:`differing_settings`) is not empty.

    Raises:
        ElmtuneError: One line naming every difference.
    """
    if differences:
        raise ElmtuneError(
            f"--resume: {run_dir} was started with different settings: {', '.join(differences)}; resume with the "
            "stored settings or start a new run in another --output-dir"
        )


def check_planned_steps(run_dir: Path, state: TrainerState, total_steps: int) -> None:
    """Refuse a resume whose step count (``--max-steps``/``--epochs``) is below the checkpoint's or the plan's.

    Raises:
        ElmtuneError: The given settings plan fewer steps than the run already has or was planned for.
    """
    floor = max(state.step, state.total_steps or 0)
    if total_steps < floor:
        what = f"planned {state.total_steps} steps" if floor == state.total_steps else f"is at step {state.step}"
        raise ElmtuneError(
            f"--resume: {run_dir} {what}, but the given --max-steps/--epochs give {total_steps}; the number of steps "
            "may only grow on resume"
        )

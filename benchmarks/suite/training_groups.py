"""Rows of whole training runs on real data: elmtune against TRL and Apple's code + ``Trainer``, and 2 processes vs 1.

``real-data``: Apple's commonsense LoRA recipe on ``--examples`` rows (see :mod:`suite.real_data`), examples per
second of the whole process (start-up, tokenisation, training, saving the adapter: the ``elmtune train`` command from
launch to exit, the peer's worker process), and the peak resident memory of that process, elmtune with and without
gradient checkpointing; and the examples per second of the training loop alone (start-up, tokenisation and saving
excluded: what a long run approaches), with the token positions each side computed (padding included).
``scale``: ``elmtune train --num-processes 2`` (gloo, CPU) against one process, same global batch and data.
"""

from __future__ import annotations

from typing import Any

from suite.harness import Group, Pick, Row, Side, Target
from suite.peer_trainers import write_apple_run

ELMTUNE, CHECKPOINTING, TRL, APPLE = "real-elmtune", "real-elmtune-checkpointing", "real-trl", "real-apple"
ONE, TWO = "scale-1-process", "scale-2-processes"


def _same_work(peer: str):  # noqa: ANN202 - a notes callable
    def notes(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
        ours, theirs = rounds[0][ELMTUNE], rounds[0][peer]
        return {
            "identical tokens": "yes" if theirs["info"]["identical_tokens"] else "**no**",
            "tokens trained (elmtune / peer)": f"{ours['metrics']['tokens']} / {theirs['info']['tokens']}",
            "adapter parameters (elmtune / peer)": (
                f"{ours['info']['adapter_parameters']} / {theirs['info']['adapter_parameters']}"
            ),
        }

    return notes


def _computed(peer: str):  # noqa: ANN202 - a notes callable
    def notes(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
        ours, theirs = rounds[0][ELMTUNE]["metrics"], rounds[0][peer]["metrics"]
        if "positions" not in ours:
            return {"positions computed (elmtune / peer)": f"? / {theirs['positions']}"}
        return {
            "positions computed (elmtune / peer)": f"{ours['positions']} / {theirs['positions']}",
            "peer / elmtune positions": f"{theirs['positions'] / ours['positions']:.3f}",
        }

    return notes


def _threads(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
    one, two = rounds[0][ONE], rounds[0][TWO]
    per = [f"{side['info']['processes']} x {side['info']['threads_per_process']}" for side in (two, one)]
    seconds = [f"{side['metrics']['run_seconds']:.1f}" for side in (two, one)]
    return {"processes x threads (2 / 1)": " vs ".join(per), "run seconds (2 / 1)": " / ".join(seconds)}


def _speed_row(name: str, peer: str, target: float, what: str) -> Row:
    return Row(
        name,
        f"LoRA training on real data, examples/s of the whole process ({what})",
        Pick(ELMTUNE, "examples", per="run_seconds"),  # the `elmtune train` command, from launch to exit
        Pick(peer, "examples", per="process_seconds"),
        "examples/s",
        True,
        Target(">=", target),
        notes=_same_work(peer),
    )


def _loop_row(name: str, peer: str, what: str) -> Row:
    return Row(
        name,
        f"LoRA training on real data, examples/s of the training loop ({what})",
        Pick(ELMTUNE, "examples", per="step_seconds_total"),  # the summed step time of metrics.jsonl
        Pick(peer, "examples", per="loop_seconds"),  # the Trainer's train_runtime
        "examples/s",
        True,
        notes=_computed(peer),
    )


def _memory_row(name: str, ours: str, peer: str, target: Target | None, what: str) -> Row:
    return Row(name, what, Pick(ours, "peak_rss_mib"), Pick(peer, "peak_rss_mib"), "MiB", False, target)


def real_data_group() -> Group:
    """Apple's commonsense recipe on real data: elmtune against TRL + peft (our model) and Trainer + peft (Apple's)."""
    sides = [
        Side(ELMTUNE, ELMTUNE),
        Side(TRL, TRL),
        Side(APPLE, APPLE, needs_apple=True),
        Side(CHECKPOINTING, CHECKPOINTING),
    ]
    peak, checkpointed = (
        "peak RSS of the real-data run",
        "peak RSS of the real-data run, elmtune with gradient checkpointing",
    )
    rows = [
        _speed_row("real-data-vs-trl", TRL, 1.5, "TRL SFTTrainer + peft on our model"),
        _speed_row("real-data-vs-apple", APPLE, 2.0, "Trainer + peft on Apple's code"),
        _loop_row("real-data-loop-vs-trl", TRL, "TRL SFTTrainer + peft on our model"),
        _loop_row("real-data-loop-vs-apple", APPLE, "Trainer + peft on Apple's code"),
        _memory_row("real-data-peak-rss-vs-apple", ELMTUNE, APPLE, Target("<=", 0.6), peak),
        _memory_row("real-data-peak-rss-vs-trl", ELMTUNE, TRL, None, peak),
        _memory_row("real-data-checkpointing-peak-rss-vs-apple", CHECKPOINTING, APPLE, None, checkpointed),
        _memory_row("real-data-checkpointing-peak-rss-vs-trl", CHECKPOINTING, TRL, None, checkpointed),
    ]
    return Group("real-data", sides, rows, setup=write_apple_run)


def scale_group() -> Group:
    """``elmtune train --num-processes 2`` (gloo, CPU) against one process: the real-data run, same global batch."""
    sides = [Side(ONE, ONE), Side(TWO, TWO)]
    rows = [
        Row(
            "scale-2-processes-vs-1",
            "2 processes (gloo) vs 1, tokens/s of the training steps",
            Pick(TWO, "tokens_per_s"),
            Pick(ONE, "tokens_per_s"),
            "tokens/s",
            True,
            notes=_threads,
        ),
        Row(
            "scale-2-processes-vs-1-wall",
            "2 processes (gloo) vs 1, examples/s of the whole run",
            Pick(TWO, "examples", per="run_seconds"),
            Pick(ONE, "examples", per="run_seconds"),
            "examples/s",
            True,
            notes=_threads,
        ),
    ]
    return Group("scale", sides, rows)

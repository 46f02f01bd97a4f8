"""Every benchmark row, grouped by sub-command: which sides run together and which rows compare them.

Targets are the goals of the performance plan; ``report`` rows have none. Each group's sides run interleaved in
fresh processes (see ``harness.py``); rows that need Apple's code are skipped without ``--apple-code``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from suite.harness import Group, Pick, Row, Side, Target
from suite.infer_sides import write_apple_eval
from suite.settings import Settings
from suite.training_groups import real_data_group, scale_group

TOKENS = "tokens/s"


def _same_picks(a: str, b: str):  # noqa: ANN202 - a notes callable
    def notes(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
        first, second = rounds[0][a]["info"]["picks"], rounds[0][b]["info"]["picks"]
        same = sum(x == y for x, y in zip(first, second, strict=True))
        return {"identical_picks": f"{same}/{len(first)}"}

    return notes


def _heavy(side: str):  # noqa: ANN202 - a notes callable
    def notes(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
        return {"heavy_imported": rounds[0][side]["info"]["heavy_imported"]}

    return notes


def _flops(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
    return {"GFLOP per token": round(rounds[0]["train-elmtune"]["info"]["flops_per_token"] / 1e9, 4)}


def train_group() -> Group:
    """LoRA training step: elmtune against the same-shape Llama + peft and Apple's code + peft; MFU; peak RSS."""
    sides = [
        Side("train-elmtune", "train-elmtune"),
        Side("train-llama", "train-llama"),
        Side("train-apple", "train-apple", needs_apple=True),
        Side("matmul-peak", "matmul-peak"),
    ]
    elm = Pick("train-elmtune", "tokens_per_s")
    rss = Pick("train-elmtune", "peak_rss_mib")
    rows = [
        Row(
            "lora-step-vs-llama",
            "LoRA training step, tokens/s",
            elm,
            Pick("train-llama", "tokens_per_s"),
            TOKENS,
            True,
            Target(">=", 1.2),
        ),
        Row(
            "lora-step-vs-apple",
            "LoRA training step, tokens/s",
            elm,
            Pick("train-apple", "tokens_per_s"),
            TOKENS,
            True,
            Target(">=", 1.4),
        ),
        Row(
            "lora-step-mfu",
            "MFU of that step (GFLOP/s vs a 2048^2 fp32 matmul)",
            Pick("train-elmtune", "gflops_per_s"),
            Pick("matmul-peak", "gflops_per_s"),
            "GFLOP/s",
            True,
            Target(">=", 0.85),
            notes=_flops,
        ),
        Row(
            "lora-step-peak-rss-vs-apple",
            "peak RSS of the LoRA step",
            rss,
            Pick("train-apple", "peak_rss_mib"),
            "MiB",
            False,
            Target("<=", 0.6),
        ),
        Row(
            "lora-step-peak-rss-vs-llama",
            "peak RSS of the LoRA step",
            rss,
            Pick("train-llama", "peak_rss_mib"),
            "MiB",
            False,
        ),
    ]
    return Group("train-step", sides, rows)


def dora_group() -> Group:
    """DoRA against LoRA step time at dropout 0.1 (elmtune's DoRA, and peft's stock DoRA on the same model)."""
    sides = [Side("dora-lora", "dora-lora"), Side("dora-elmtune", "dora-elmtune"), Side("dora-peft", "dora-peft")]
    lora = Pick("dora-lora", "step_seconds")
    rows = [
        Row(
            "dora-vs-lora-step",
            "DoRA step time vs LoRA (dropout 0.1)",
            Pick("dora-elmtune", "step_seconds"),
            lora,
            "s/step",
            False,
            Target("<=", 1.1),
        ),
        Row(
            "peft-dora-vs-lora-step",
            "peft's stock DoRA step time vs LoRA",
            Pick("dora-peft", "step_seconds"),
            lora,
            "s/step",
            False,
        ),
    ]
    return Group("dora", sides, rows)


def dpo_group() -> Group:
    """DPO steps (reference on the fly, precomputed; shared prompts or separate rows) against an SFT step."""
    sides = [Side(k, k) for k in ("dpo-sft", "dpo-on-the-fly", "dpo-precomputed", "dpo-separate")]
    sft = Pick("dpo-sft", "step_seconds")
    rows = [
        Row(
            "dpo-on-the-fly-vs-sft",
            "DPO step, reference on the fly, vs SFT",
            Pick("dpo-on-the-fly", "step_seconds"),
            sft,
            "s/step",
            False,
            Target("<=", 1.4),
        ),
        Row(
            "dpo-precomputed-vs-sft",
            "DPO step, reference precomputed, vs SFT",
            Pick("dpo-precomputed", "step_seconds"),
            sft,
            "s/step",
            False,
            Target("<=", 1.05),
        ),
        Row(
            "dpo-separate-vs-sft",
            "DPO step, reference on the fly, chosen and rejected as separate rows (--no-share-prompt), vs SFT",
            Pick("dpo-separate", "step_seconds"),
            sft,
            "s/step",
            False,
        ),
    ]
    return Group("dpo", sides, rows)


def eval_group() -> Group:
    """Multiple-choice evaluation (lm-eval prompts), questions per second including start-up, identical picks."""
    sides = [
        Side("eval-elmtune", "eval-elmtune"),
        Side("eval-lm-eval", "eval-lm-eval"),
        Side("eval-lm-eval-apple", "eval-lm-eval-apple", needs_apple=True),
    ]
    ours = Pick("eval-elmtune", "questions", per="process_seconds")
    what = "multiple-choice eval, questions/s with start-up"
    rows = [
        Row(
            "eval-vs-lm-eval",
            what + " (lm-eval HF backend on our model)",
            ours,
            Pick("eval-lm-eval", "questions", per="process_seconds"),
            "questions/s",
            True,
            Target(">=", 4.0),
            notes=_same_picks("eval-elmtune", "eval-lm-eval"),
        ),
        Row(
            "eval-vs-lm-eval-apple",
            what + " (lm-eval HF backend on Apple's code)",
            ours,
            Pick("eval-lm-eval-apple", "questions", per="process_seconds"),
            "questions/s",
            True,
            Target(">=", 4.0),
            notes=_same_picks("eval-elmtune", "eval-lm-eval-apple"),
        ),
    ]
    scoring = Pick("eval-elmtune", "questions", per="scoring_seconds")
    for name, peer, on in (
        ("eval-scoring-vs-lm-eval", "eval-lm-eval", "our model"),
        ("eval-scoring-vs-lm-eval-apple", "eval-lm-eval-apple", "Apple's code"),
    ):
        rows.append(
            Row(
                name,
                f"multiple-choice eval, questions/s of the scoring alone (lm-eval HF backend on {on})",
                scoring,  # the scorer's construction and scoring: no imports, no model build, no data loading
                Pick(peer, "questions", per="scoring_seconds"),
                "questions/s",
                True,
                notes=_same_picks("eval-elmtune", peer),
            )
        )
    return Group("eval", sides, rows, setup=write_apple_eval)


def generate_group() -> Group:
    """Greedy generation, batch 1 and batched: elmtune against the same-shape Llama and Apple's code."""
    sides = [
        Side("generate-elmtune", "generate-elmtune"),
        Side("generate-llama", "generate-llama"),
        Side("generate-apple", "generate-apple", needs_apple=True),
        Side("weight-read-peak", "weight-read-peak"),
    ]
    rows = []
    for metric, what in (("batch1_tokens_per_s", "greedy generation, batch 1"), ("batched_tokens_per_s", "batched")):
        label = "b1" if metric.startswith("batch1") else "batched"
        what = what if label == "b1" else "greedy generation, batched prompts"
        ours = Pick("generate-elmtune", metric)
        rows.append(
            Row(
                f"generate-{label}-vs-llama",
                what,
                ours,
                Pick("generate-llama", metric),
                TOKENS,
                True,
                Target(">=", 1.0),
            )
        )
        rows.append(
            Row(
                f"generate-{label}-vs-apple",
                what,
                ours,
                Pick("generate-apple", metric),
                TOKENS,
                True,
                Target(">=", 2.0),
            )
        )
    return Group("generate", sides, [*rows, *_weight_read_rows()])


def _weight_read_notes(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
    best = max(rounds, key=lambda r: r["weight-read-peak"]["metrics"]["tokens_per_s"])["weight-read-peak"]
    return {
        "weights read per token (MiB)": best["info"]["weight_mib"],
        "GB/s at the floor": round(best["metrics"]["gb_per_s"], 1),
    }


def _weight_read_rows() -> list[Row]:
    """Batch-1 generation against its floor (the weights' matrix-vector products alone), and the floor's lead."""
    floor = Pick("weight-read-peak", "tokens_per_s")
    return [
        Row(
            "generate-b1-vs-weight-read",
            "greedy generation, batch 1, vs the matrix-vector products alone (the floor)",
            Pick("generate-elmtune", "batch1_tokens_per_s"),
            floor,
            TOKENS,
            True,
            notes=_weight_read_notes,
        ),
        Row(
            "weight-read-vs-apple-b1",
            "the floor's lead over Apple's batch-1 generation: the most any fp32 decoder could lead by",
            floor,
            Pick("generate-apple", "batch1_tokens_per_s"),
            TOKENS,
            True,
        ),
    ]


def _merge_setup(settings: Settings) -> dict[str, Any]:
    from merge_memory import child

    from suite.job_sides import merge_paths

    base, adapter = merge_paths(settings)
    dtype = {"bf16": "bfloat16", "f32": "float32"}[settings.merge_dtype]
    built = child("build", settings.preset, dtype, str(base), str(adapter), str(settings.r))
    adapter_mib = sum(f.stat().st_size for f in adapter.glob("*.safetensors")) / 2**20
    return {"largest tensor + adapter (MiB)": built["largest_tensor"] / 2**20 + adapter_mib}


def merge_group() -> Group:
    """Merging an Apple-recipe adapter: elmtune in memory and streaming against peft; streaming peak RSS."""
    from merge_memory import CHILD

    run = (sys.executable, "-c", CHILD)
    base, adapter = str(Path("@WORKDIR@") / "merge" / "base"), str(Path("@WORKDIR@") / "merge" / "adapter")
    merge = (*run, "merge", base, adapter, "--overwrite", "--no-verify", "-o")
    sides = [
        Side("merge-import-floor", command=(*run, "import")),
        Side("merge-in-memory", command=(*merge, "@WORKDIR@/merged-in-memory")),
        Side("merge-streaming", command=(*merge, "@WORKDIR@/merged-streaming", "--low-memory")),
        Side("merge-peft", "merge-peft"),
    ]
    peft = Pick("merge-peft", "process_seconds")
    rows = [
        Row(
            "merge-in-memory-vs-peft",
            "merge, in memory, process wall time",
            Pick("merge-in-memory", "process_seconds"),
            peft,
            "s",
            False,
            Target("<=", 1.0),
        ),
        Row(
            "merge-streaming-vs-peft",
            "merge, streaming, process wall time",
            Pick("merge-streaming", "process_seconds"),
            peft,
            "s",
            False,
            Target("<=", 1.0),
        ),
        Row(
            "merge-streaming-peak-rss",
            "streaming merge peak RSS over the import floor",
            Pick("merge-streaming", "peak_mib", minus=("merge-import-floor", "peak_mib")),
            Pick(constant="largest tensor + adapter (MiB)"),
            "MiB",
            False,
            Target("<=", 1.5),
        ),
        Row(
            "merge-in-memory-peak-rss-vs-peft",
            "in-memory merge peak RSS",
            Pick("merge-in-memory", "peak_mib"),
            Pick("merge-peft", "peak_mib"),
            "MiB",
            False,
        ),
    ]
    return Group("merge", sides, rows, setup=_merge_setup)


def startup_group() -> Group:
    """``elmtune train`` start-up to the first step (tiny, the preset) against importing torch, transformers, peft."""
    floor = Side("import-floor", command=(sys.executable, "-c", "import torch, transformers, peft; print('{}')"))
    sides = [floor, Side("startup-tiny", "startup-tiny"), Side("startup-preset", "startup-preset")]
    bare = Pick("import-floor", "process_seconds")
    rows = [
        Row(
            "startup-tiny",
            "`elmtune train` start-up to first step, tiny",
            Pick("startup-tiny", "seconds_to_first_step"),
            bare,
            "s",
            False,
            notes=_heavy("startup-tiny"),
        ),
        Row(
            "startup-preset",
            "`elmtune train` start-up to first step, preset",
            Pick("startup-preset", "seconds_to_first_step"),
            bare,
            "s",
            False,
            notes=_heavy("startup-preset"),
        ),
    ]
    return Group("startup", sides, rows)


def plan_group() -> Group:
    """``elmtune plan``'s predicted peak against the measured peak RSS of the same run (six tiny/270M settings).

    One round: peak memory does not vary between runs the way speed does, and a round is six training runs.
    """
    script = str(Path(__file__).resolve().parents[1] / "plan_vs_measured.py")
    sides = [Side("plan-vs-measured", command=(sys.executable, script, "--side"), quick_args=("--quick",))]
    rows = [
        Row(
            "plan-vs-measured",
            "`elmtune plan` predicted vs measured peak RSS, 270M LoRA 4 x 256 (tiny if --quick); notes: all settings",
            Pick("plan-vs-measured", "predicted_mib"),
            Pick("plan-vs-measured", "measured_mib"),
            "MiB",
            False,
            Target("<=", 1.15),
            notes=_plan_notes,
        )
    ]
    return Group("plan", sides, rows, max_rounds=1)


def _plan_notes(rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
    metrics = rounds[0]["plan-vs-measured"]["metrics"]
    within = f"{metrics['within_15pct']} of {metrics['settings']}"
    return {"settings within 15%": within, "worst error": metrics["worst_error"]}


def all_groups() -> dict[str, Group]:
    """Every group by sub-command name, in the order ``--all`` runs them."""
    groups = [train_group(), dora_group(), dpo_group(), eval_group(), generate_group(), merge_group(), startup_group()]
    groups += [real_data_group(), scale_group(), plan_group()]
    return {g.name: g for g in groups}


def defined_rows() -> list[tuple[str, str, str, str]]:
    """(group, row, what, target) of every row, in the order of the table."""
    return [
        (group.name, row.name, row.what, str(row.target) if row.target else "report")
        for group in all_groups().values()
        for row in group.rows
    ]

"""One side of one benchmark row, run in its own process by ``run.py``: ``worker.py KIND SETTINGS_JSON``.

It prints one JSON line ``{"metrics": {...}, "info": {...}}`` last; see ``suite/harness.py``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite import infer_sides, job_sides, peer_trainers, train_runs, train_sides  # noqa: E402
from suite.settings import Settings  # noqa: E402

WORKERS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "train-elmtune": lambda s: train_sides.step_metrics(s, train_sides.elmtune_adapted(s)),
    "train-llama": lambda s: train_sides.step_metrics(s, train_sides.llama_adapted(s)),
    "train-apple": lambda s: train_sides.step_metrics(s, train_sides.apple_adapted(s), count_flops=False),
    "matmul-peak": train_sides.matmul_peak,
    "dora-lora": lambda s: train_sides.dora_variant(s, "lora"),
    "dora-elmtune": lambda s: train_sides.dora_variant(s, "dora"),
    "dora-peft": lambda s: train_sides.dora_variant(s, "dora-peft"),
    "dpo-sft": lambda s: train_sides.dpo_kind(s, "sft"),
    "dpo-on-the-fly": lambda s: train_sides.dpo_kind(s, "dpo"),
    "dpo-precomputed": lambda s: train_sides.dpo_kind(s, "dpo-precomputed"),
    "dpo-separate": lambda s: train_sides.dpo_kind(s, "dpo-separate"),
    "eval-elmtune": infer_sides.eval_elmtune,
    "eval-lm-eval": infer_sides.eval_lm_eval,
    "eval-lm-eval-apple": lambda s: infer_sides.eval_lm_eval(s, apple=True),
    "generate-elmtune": lambda s: infer_sides.generation(s, "elmtune"),
    "generate-llama": lambda s: infer_sides.generation(s, "llama"),
    "generate-apple": lambda s: infer_sides.generation(s, "apple"),
    "weight-read-peak": infer_sides.weight_read_peak,
    "merge-peft": job_sides.merge_peft,
    "startup-tiny": lambda s: job_sides.train_startup(s, "tiny"),
    "startup-preset": lambda s: job_sides.train_startup(s, s.preset),
    "real-elmtune": train_runs.elmtune_train,
    "real-elmtune-checkpointing": lambda s: train_runs.elmtune_train(s, checkpointing=True),
    "real-trl": peer_trainers.trl_sft,
    "real-apple": peer_trainers.apple_trainer,
    "scale-1-process": train_runs.elmtune_train,
    "scale-2-processes": lambda s: train_runs.elmtune_train(s, processes=2),
}


def libraries() -> str:
    """The versions of the libraries a side ran with (Apple's sides may run under another environment)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "transformers", "peft", "lm_eval"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def main() -> None:
    kind, settings = sys.argv[1], Settings.from_json(sys.argv[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = WORKERS[kind](settings)
    result.setdefault("info", {})["libraries"] = libraries()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

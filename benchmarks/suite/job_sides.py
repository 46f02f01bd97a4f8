"""Whole-command sides: merging an adapter (elmtune, and peft's ``merge_and_unload``) and ``elmtune train`` start-up.

Merge sides read the base checkpoint and adapter that the group's set-up built with ``merge_memory.py``'s builder
(random weights, Apple's targets, a non-zero update); elmtune's own sides are ``merge_memory.py``'s child process
itself. Start-up sides run ``elmtune train`` in-process and stop at the first optimizer step: the time from the
process launch to that step, and which heavy optional packages were imported by then.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from suite.measure import peak_rss_mib
from suite.settings import ROOT, Settings

SFT_DATA = ROOT / "tests" / "fixtures" / "data" / "commonsense_train_sample200.json"
HEAVY_MODULES = (
    "lm_eval",
    "trl",
    "datasets",
    "pandas",
    "scipy",
    "sklearn",
    "matplotlib",
    "gguf",
    "bitsandbytes",
    "deepspeed",
    "wandb",
    "mlflow",
    "tensorboard",
    "torchvision",
    "torch._dynamo",
    "torch._inductor",
    "sympy",
    "evaluate",
    "huggingface_hub",
    "safetensors",
    "accelerate",
    "peft",
)
"""Packages worth knowing about when they are imported before the first step (imported or not, each is listed)."""


def merge_paths(settings: Settings) -> tuple[Path, Path]:
    """(base checkpoint, adapter) directories the merge group's set-up builds."""
    root = Path(settings.workdir) / "merge"
    return root / "base", root / "adapter"


def merge_peft(settings: Settings) -> dict[str, Any]:
    """What peft users run: load the base, ``PeftModel.from_pretrained``, ``merge_and_unload``, ``save_pretrained``."""
    start = time.perf_counter()
    from peft import PeftModel

    from elmtune.models import OpenELMForCausalLM

    base, adapter = merge_paths(settings)
    model = OpenELMForCausalLM.from_pretrained(base)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out = Path(tempfile.mkdtemp(prefix="peft-merged-", dir=settings.workdir))
    merged.save_pretrained(out)
    return {"metrics": {"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}, "info": {}}


def train_startup(settings: Settings, preset: str) -> dict[str, Any]:
    """Seconds from the process launch to the first optimizer step of ``elmtune train`` on ``preset``; heavy imports."""
    import elmtune.finetune.loop as loop
    from elmtune.cli.app import main

    launched = float(os.environ["BENCH_LAUNCHED_AT"])

    def first_step(*args: object, **kwargs: object) -> None:
        seconds = time.time() - launched
        imported = sorted(m for m in HEAVY_MODULES if m in sys.modules)
        metrics = {"seconds_to_first_step": seconds, "peak_rss_mib": peak_rss_mib(), "modules": len(sys.modules)}
        print(json.dumps({"metrics": metrics, "info": {"heavy_imported": imported}}), flush=True)
        os._exit(0)  # the step itself is not part of the start-up

    loop.train_step = first_step
    out = tempfile.mkdtemp(prefix="startup-", dir=settings.workdir)
    sys.argv = ["elmtune", "train", "--model", preset, "--data", str(SFT_DATA), "--max-length", "256"]
    sys.argv += ["--max-steps", "1", "--device", "cpu", "-o", str(Path(out) / "run")]
    main()
    raise RuntimeError("elmtune train finished without reaching an optimizer step")

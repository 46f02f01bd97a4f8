"""Non-finite numbers stop the work: a diverging run exits 1 with one line and saves nothing from the bad step,
``skip_nonfinite`` skips and counts such steps, metrics stay strict JSON, and evaluation refuses NaN weights/scores."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import MetricsWriter
from elmtune.models.finite import NonFiniteError

ROOT = Path(__file__).resolve().parents[2]
DIVERGING_LR = 1e20  # one AdamW step moves every adapter weight by ~1e20: the next forward overflows to NaN


def _strict_rows(path: Path) -> list[dict]:
    """Rows of a metrics file, refusing the non-standard NaN/Infinity tokens that plain json.dumps writes."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds the non-JSON number {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_diverging_run_exits_1_with_one_line_and_saves_nothing_from_the_bad_step(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "elmtune.cli", "train", "--config", str(ROOT / "recipes" / "tiny-lora-commonsense.yaml"),
        "--data", str(ROOT / "tests" / "fixtures" / "data" / "commonsense_train_sample200.json"),
        "--lr", str(DIVERGING_LR), "--warmup", "0", "--max-steps", "4", "--save-every", "1", "-o", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step 2: the loss is nan") and "diverged" in last and "--lr" in last
    assert not (out / "final").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]  # the last good step only
    kept = load_file(str(out / "checkpoints" / "step-00000001" / "adapter" / "adapter_model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in kept.values())
    rows = _strict_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1] and math.isfinite(rows[0]["loss"])


def test_skip_nonfinite_skips_and_counts_the_bad_steps(make_config):
    result = run_training(make_config("skip", lr=DIVERGING_LR, max_steps=4, skip_nonfinite=3))
    rows = [r for r in _strict_rows(result.metrics_path) if "loss" in r]
    assert [r["skipped_nonfinite"] for r in rows] == [0, 1, 2, 3]
    assert math.isfinite(rows[0]["loss"]) and [r["loss"] for r in rows[1:]] == [None, None, None]
    final = load_file(str(result.final_adapter / "adapter_model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in final.values())
    state = json.loads((result.run_dir / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["skipped_nonfinite"] == 3


def test_one_bad_step_more_than_allowed_stops_the_run(make_config):
    with pytest.raises(NonFiniteError, match=r"step 4: .*\(2 such steps allowed\)"):
        run_training(make_config("stop", lr=DIVERGING_LR, max_steps=6, skip_nonfinite=2))


def test_metrics_writer_writes_strict_json(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3, "tokens": 7})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 1, "loss": None, "grad_norm": None, "lr": 1e-3, "tokens": 7}
    assert "NaN" not in line and "Infinity" not in line


def test_evaluation_refuses_an_adapter_with_non_finite_weights(tmp_path):
    from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
    from elmtune.evaluation.runner import ModelSpec, load_for_eval
    from elmtune.models import load_model

    model = apply_adapter(load_model("tiny"), AdapterConfig(r=2, alpha=4, targets=("v",)))
    with torch.no_grad():
        name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
        param[0, 0] = float("nan")
    adapter = save_adapter(model, tmp_path / "nan-adapter", base_name="tiny")
    with pytest.raises(NonFiniteError, match=r"nan-adapter holds NaN or infinite weights \(.*lora_B"):
        load_for_eval(ModelSpec("tiny", adapter=adapter))


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_a_non_finite_log_likelihood_is_never_scored(value):
    from elmtune.evaluation.data import ChoiceScore

    with pytest.raises(NonFiniteError, match="log-likelihood"):
        ChoiceScore(value, 3, False)

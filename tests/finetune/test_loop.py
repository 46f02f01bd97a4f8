"""The training loop: loss falls, accumulation equals the large batch, logs and run directory, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from elmtune.errors import ElmtuneError
from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import read_metrics


def _adapter(run_dir):
    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def test_loss_falls_and_run_directory_describes_itself(make_config):
    config = make_config(max_steps=12, lr=2e-2, data={"validation_size": 8}, eval_every=6, save_every=6)
    result = run_training(config)
    rows = read_metrics(result.metrics_path)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    first = next(r for r in rows if "loss" in r)
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "peak_memory_mb"):
        assert key in first
    assert [r["step"] for r in rows if "eval_loss" in r] == [6, 12]
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "loss_curve.png").stat().st_size > 1000
    assert (run / "final" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000006", "step-00000012"]
    ckpt = run / "checkpoints" / "step-00000012"
    for name in ("adapter", "optimizer.pt", "scheduler.json", "rng-rank0.pt", "trainer_state.json", "config.yaml"):
        assert (ckpt / name).exists(), name
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 12


def test_gradient_accumulation_equals_the_large_batch(make_config):
    big = run_training(make_config("big", batch_size=4, grad_accum=1, max_steps=3))
    small = run_training(make_config("small", batch_size=2, grad_accum=2, max_steps=3))
    a, b = _adapter(big.run_dir), _adapter(small.run_dir)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), key
    losses = [[r["loss"] for r in read_metrics(x.metrics_path)] for x in (big, small)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_epoch_column_counts_batches_across_epoch_boundaries(make_config):
    result = run_training(make_config("epochs", data={"limit": 16}, max_steps=10, lr=1e-3))  # 4 batches per epoch
    rows = [r for r in read_metrics(result.metrics_path) if "loss" in r]
    assert [r["epoch"] for r in rows] == [step / 4 for step in range(1, 11)]


def test_packed_training_runs_and_counts_the_same_targets(make_config):
    result = run_training(make_config("packed", data={"packing": True, "max_length": 128}, max_steps=2))
    assert result.steps == 2 and result.last_loss > 0


def test_fresh_run_refuses_to_overwrite_checkpoints(make_config):
    config = make_config("again", max_steps=1)
    run_training(config)
    with pytest.raises(ElmtuneError, match="--resume"):
        run_training(config)


def _train_cli(run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "elmtune.cli",
        "train",
        "-m",
        "tiny",
        "-d",
        os.environ["ELMTUNE_TEST_DATA"],
        "-o",
        str(run_dir),
        "--max-steps",
        "8",
        "--batch-size",
        "4",
        "--limit",
        "48",
        "--max-length",
        "64",
        "--train-on-prompt",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--dropout",
        "0.1",
        "--lr",
        "1e-2",
        "--warmup",
        "2",
        "--device",
        "cpu",
        "--save-every",
        "2",
        "--keep-last",
        "10",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_and_resume_gives_bit_identical_adapter(tmp_path, commonsense_path, monkeypatch):
    # Dropout is on, so RNG state must be restored exactly too.
    monkeypatch.setenv("ELMTUNE_TEST_DATA", str(commonsense_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cli(tmp_path / "whole"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it mid-run, after step 5 (between checkpoints 4 and 6)
        if metrics.is_file() and any(r.get("step", 0) >= 5 for r in read_metrics(metrics)):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    resumed = subprocess.run(_train_cli(killed, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = _adapter(tmp_path / "whole"), _adapter(killed)
    assert whole.keys() == again.keys()
    for key in whole:
        assert torch.equal(whole[key], again[key]), key
    steps = [r["step"] for r in read_metrics(metrics) if "loss" in r]
    assert steps == list(range(1, 9))  # rows of lost work were dropped, none duplicated


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, commonsense_path, monkeypatch):
    monkeypatch.setenv("ELMTUNE_TEST_DATA", str(commonsense_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--dropout", "0", "--max-steps", "4", "--save-every", "0"]
    single = _train_cli(tmp_path / "one", *common)
    single[single.index("--batch-size") + 1] = "4"
    double = _train_cli(tmp_path / "two", *common, "--num-processes", "2")
    double[double.index("--batch-size") + 1] = "2"  # per process: 2 x 2 = the same global batch of 4
    for command, processes in ((single, 1), (double, 2)):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{processes} process(es); global batch 4 examples" in result.stderr
    one, two = ([r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")] for name in ("one", "two"))
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-5)
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for key in a:
        # Adam divides by sqrt(v): an entry whose gradient is ~0 can move by up to lr on a last-bit difference of
        # the all-reduced gradient, so compare each tensor as a whole rather than entry by entry.
        assert float((a[key] - b[key]).norm() / a[key].norm()) < 1e-3, key

"""The training loop: loss falls, accumulation equals the large batch, logs and run directory, exact resume."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmtune.datasets import prepare_data
from elmtune.errors import ElmtuneError
from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import read_metrics
from elmtune.models import load_model, load_tokenizer


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
    assert not (ckpt / "trainable.safetensors").exists()  # the adapter is saved once, in adapter/
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 12


def _assert_equal_up_to_adam_rounding(a, b, tight):
    """Adapters from two computations of the same run at lr 1e-2: equal to ``tight`` but at a few elements.

    AdamW divides each gradient element by its own running size, so an element whose gradient is near zero turns
    fp32 rounding into a visible step; 1e-4 is 1% of one step at this learning rate.
    """
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-5, msg=key)
        assert (a[key] - b[key]).abs().gt(tight).float().mean() < 0.01, key  # only a few such elements


def test_gradient_accumulation_equals_the_large_batch(make_config):
    big = run_training(make_config("big", batch_size=4, grad_accum=1, max_steps=3))
    small = run_training(make_config("small", batch_size=2, grad_accum=2, max_steps=3))
    a, b = _adapter(big.run_dir), _adapter(small.run_dir)
    _assert_equal_up_to_adam_rounding(a, b, tight=1e-6)
    losses = [[r["loss"] for r in read_metrics(x.metrics_path)] for x in (big, small)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_epoch_column_counts_batches_across_epoch_boundaries(make_config):
    result = run_training(make_config("epochs", data={"limit": 16}, max_steps=10, lr=1e-3))  # 4 batches per epoch
    rows = [r for r in read_metrics(result.metrics_path) if "loss" in r]
    assert [r["epoch"] for r in rows] == [step / 4 for step in range(1, 11)]


def test_packed_training_runs_and_counts_the_same_targets(make_config):
    # 8 examples packed into at most 8 rows: step 1 is one batch holding every target token once, computed on the
    # initial model, which is the base model (LoRA's B starts at zero). Its loss must be the mean cross-entropy over
    # the target tokens of the 8 examples, each run alone through the base model.
    data = {"packing": True, "max_length": 128, "limit": 8}
    config = make_config("packed", data=data, batch_size=8, max_steps=2)
    result = run_training(config)
    assert result.steps == 2
    rows = [r for r in read_metrics(result.metrics_path) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    examples = prepare_data(dataclasses.replace(config.data, packing=False), load_tokenizer("tiny")).train
    assert len(examples) == 8
    base = load_model("tiny").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            ids = torch.as_tensor(example.input_ids, dtype=torch.long)[None]  # (1, L)
            targets = torch.as_tensor(example.labels, dtype=torch.long)[1:]  # (L-1,): position t predicts t+1
            logits = base(input_ids=ids).logits[0, :-1].double()  # (L-1, V)
            keep = targets != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    assert rows[0]["loss"] == pytest.approx(total / count, rel=1e-5)
    assert rows[1]["loss"] < rows[0]["loss"]  # the same batch again, after one update


def test_padding_free_training_equals_padded_training(make_config):
    # The same micro-batches in one row without padding: the same losses and adapter, up to float rounding. Examples
    # of 77 to 87 tokens, so the padded batches do pad; no dropout, whose masks follow the batch's shape.
    runs = {}
    for name, padding_free in (("padded", False), ("padding-free", True)):
        data = {"limit": 16, "max_length": 256, "padding_free": padding_free}
        config = make_config(name, data=data, max_steps=3)
        result = run_training(config)
        runs[name] = ([r for r in read_metrics(result.metrics_path) if "loss" in r], _adapter(result.run_dir))
    (padded_rows, padded), (free_rows, free) = runs["padded"], runs["padding-free"]
    assert [r["tokens"] for r in free_rows] == [r["tokens"] for r in padded_rows]  # tokens that are not padding
    for padded_row, free_row in zip(padded_rows, free_rows, strict=True):
        assert free_row["loss"] == pytest.approx(padded_row["loss"], rel=1e-5)
    # two computations (padding-free: one row per batch), so somewhere their float rounding differs
    assert any(not torch.equal(free[key], padded[key]) for key in padded)
    _assert_equal_up_to_adam_rounding(free, padded, tight=1e-5)


@pytest.mark.parametrize(
    ("adapter", "kinds"),
    [
        ({"method": "dora", "train_norms": True, "dropout": 0.1}, ("lora_magnitude_vector", "attn_norm.weight")),
        ({"init": "pissa"}, ("lora_A", "lora_B")),
    ],
    ids=["dora-magnitudes-and-norms", "pissa"],
)
def test_resume_restores_every_trainable_tensor_from_the_adapter_directory(make_config, adapter, kinds):
    # DoRA magnitudes and trained norms (modules_to_save) are trainable tensors besides LoRA's A and B; PiSSA's
    # adapter is saved converted to plain LoRA on the original base. Resume reads them from checkpoint/adapter/.
    config = make_config("resumed", max_steps=4, save_every=2, keep_last=10, adapter=adapter)
    run_training(config)
    run_dir = Path(config.train.output_dir)
    whole = _adapter(run_dir)
    assert all(any(kind in k for k in whole) for kind in kinds)
    checkpoint = run_dir / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in checkpoint.iterdir() if p.suffix in ("", ".safetensors")) == ["adapter"]
    shutil.rmtree(run_dir / "checkpoints" / "step-00000004")
    shutil.rmtree(run_dir / "final")
    run_training(config, resume=True)
    again = _adapter(run_dir)
    assert whole.keys() == again.keys()
    for key in whole:
        assert torch.equal(whole[key], again[key]), key


def test_fresh_run_refuses_to_overwrite_checkpoints(make_config):
    config = make_config("again", max_steps=1)
    run_training(config)
    with pytest.raises(ElmtuneError, match="--resume"):
        run_training(config)


@pytest.mark.slow
def test_sigkill_and_resume_gives_bit_identical_adapter(tmp_path, train_command):
    # Dropout is on, so RNG state must be restored exactly too.
    def _train_cli(run_dir, *extra):
        flags = {"max_steps": 8, "dropout": 0.1, "warmup": 2, "save_every": 2, "keep_last": 10}
        return train_command(run_dir, *extra, **flags)

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
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, train_command):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = {"max_steps": 4, "warmup": 2, "save_every": 0}
    single = train_command(tmp_path / "one", batch_size=4, **common)
    # per process: 2 x 2 = the same global batch of 4
    double = train_command(tmp_path / "two", "--num-processes", "2", batch_size=2, **common)
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

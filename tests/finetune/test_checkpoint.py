"""Atomic checkpoints, pruning, RNG round trip, and survival of a kill during a write."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from elmtune.finetune.checkpoint import (
    TrainerState,
    checkpoint_dirs,
    load_checkpoint,
    read_rng_states,
    restore_rng_states,
    save_checkpoint,
)
from elmtune.finetune.schedule import Schedule


def _parts():
    param = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    scheduler = Schedule(peak_lr=0.1, total_steps=10, warmup_steps=2).scheduler(optimizer)
    scheduler.step()
    return param, optimizer, scheduler


def _write_adapter(path):
    path.mkdir()
    (path / "adapter_model.safetensors").write_bytes(b"stand-in")


def test_round_trip_restores_counters_optimizer_scheduler_and_rng(tmp_path):
    _, optimizer, scheduler = _parts()
    state = TrainerState(step=3, epoch=1, batch_in_epoch=2, tokens_seen=99, log_history=[{"step": 3, "loss": 1.5}])
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    path = save_checkpoint(
        tmp_path,
        state,
        write_adapter=_write_adapter,
        optimizer=optimizer,
        scheduler=scheduler,
        config={"train": {"lr": 0.1}},
    )
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    loaded = load_checkpoint(path)
    restore_rng_states(*read_rng_states(path))
    assert (torch.rand(2).tolist(), random.random(), np.random.rand()) == (expected[0].tolist(), *expected[1:])
    assert loaded.state == state and loaded.config == {"train": {"lr": 0.1}}
    assert loaded.scheduler == scheduler.state_dict()
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert (loaded.adapter_dir / "adapter_model.safetensors").read_bytes() == b"stand-in"


def test_keeps_only_the_last_k(tmp_path):
    _, optimizer, scheduler = _parts()
    for step in (1, 2, 3, 4):
        save_checkpoint(
            tmp_path,
            TrainerState(step=step),
            write_adapter=_write_adapter,
            optimizer=optimizer,
            scheduler=scheduler,
            config={},
            keep_last=2,
        )
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000003", "step-00000004"]
    assert checkpoint_dirs(tmp_path)[-1].name == "step-00000004"


def test_kill_during_a_write_leaves_the_previous_checkpoint_intact(tmp_path):
    _, optimizer, scheduler = _parts()
    save_checkpoint(
        tmp_path,
        TrainerState(step=1),
        write_adapter=_write_adapter,
        optimizer=optimizer,
        scheduler=scheduler,
        config={},
    )
    # A second process starts writing step 2 and is SIGKILLed while inside the adapter writer.
    script = textwrap.dedent(f"""
        import os, signal, time, torch
        from pathlib import Path
        from elmtune.finetune.checkpoint import TrainerState, save_checkpoint
        from elmtune.finetune.schedule import Schedule
        p = torch.nn.Parameter(torch.zeros(1)); opt = torch.optim.AdamW([p])
        sched = Schedule(peak_lr=1e-3, total_steps=3).scheduler(opt)
        def slow_adapter(path):
            path.mkdir()
            (path / "half-written").write_bytes(b"x" * 1000)
            print("writing", flush=True); time.sleep(60)
        save_checkpoint(Path({str(tmp_path)!r}), TrainerState(step=2), write_adapter=slow_adapter,
                        optimizer=opt, scheduler=sched, config={{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000001"]
    loaded = load_checkpoint(tmp_path / "step-00000001")
    assert loaded.state.step == 1
    # The next successful save removes the orphaned temporary directory.
    save_checkpoint(
        tmp_path,
        TrainerState(step=3),
        write_adapter=_write_adapter,
        optimizer=optimizer,
        scheduler=scheduler,
        config={},
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000003"]
    assert json.loads((tmp_path / "step-00000003" / "trainer_state.json").read_text())["step"] == 3


def test_a_full_disk_during_a_checkpoint_leaves_no_partial_directory(make_config, monkeypatch):
    import errno

    import pytest

    import elmtune.finetune.checkpoint as checkpoint_module
    from elmtune.finetune.run import run_training
    from elmtune.output_paths import OutputWriteError

    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # the first checkpoint writes optimizer.pt and one RNG file; the second one fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    config = make_config("full", max_steps=2, save_every=1)
    with pytest.raises(OutputWriteError, match=r"step-00000002: No space left on device; nothing was written"):
        run_training(config)
    run_dir = config.train.output_dir
    names = sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir())
    assert names == ["step-00000001"]  # the good checkpoint stays, no staged directory is left behind
    assert not (Path(run_dir) / "final").exists()

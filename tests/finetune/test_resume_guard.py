"""Resume protects the run, and a train output directory is never clobbered.

Every refusal is checked for its message and for leaving the run directory byte-identical.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmtune.errors import ElmtuneError
from elmtune.finetune.checkpoint import TrainerState, read_rng_states, rng_states, save_checkpoint
from elmtune.finetune.resume_check import differing_settings
from elmtune.finetune.run import resolve_resume, run_training
from elmtune.finetune.run_lock import RunLock
from elmtune.finetune.run_log import read_metrics
from elmtune.finetune.schedule import Schedule

CKPT = "checkpoints/step-{:08d}"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def _refused(config, snapshot_of: Path, match: str, **kwargs) -> str:
    before = _snapshot(snapshot_of) if snapshot_of.exists() else None
    with pytest.raises(ElmtuneError, match=match) as err:
        run_training(config, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert (_snapshot(snapshot_of) if snapshot_of.exists() else None) == before
    return message


@pytest.fixture
def finished_run(make_config):
    """A finished 4-step run with checkpoints at steps 2 and 4 (dropout on, so RNG state matters)."""
    config = make_config("base", max_steps=4, save_every=2, keep_last=10, adapter={"dropout": 0.1})
    run_training(config)
    return config


# --- resume: the settings that define the run must be the stored ones ---------------------------------------------


def test_resume_refuses_changed_settings_naming_each_with_stored_and_given(make_config, finished_run):
    run_dir = Path(finished_run.train.output_dir)
    changed = make_config(
        "base", max_steps=4, save_every=2, keep_last=10, lr=2e-2, batch_size=2, adapter={"dropout": 0.1, "r": 8}
    )
    message = _refused(changed, run_dir, "was started with different settings", resume=True)
    for fragment in ("train.lr 0.01 -> 0.02", "train.batch_size 4 -> 2", "adapter.r 4 -> 8", "another --output-dir"):
        assert fragment in message
    assert "max_steps" not in message and "dropout" not in message  # only what differs is named


def test_resume_refuses_other_data_path_and_changed_data_content(make_config, tmp_path, commonsense_path):
    data = tmp_path / "train.json"
    shutil.copy(commonsense_path, data)
    config = make_config("data", data={"path": str(data)}, max_steps=2, save_every=1)
    run_training(config)
    run_dir = Path(config.train.output_dir)
    other = make_config("data", data={"path": str(commonsense_path)}, max_steps=2, save_every=1)
    assert f"data.path {data} -> {commonsense_path}" in _refused(other, run_dir, "different settings", resume=True)
    rows = json.loads(data.read_text())
    rows[0]["output"] = rows[0]["output"] + " (edited)"
    data.write_text(json.dumps(rows))
    assert "data content sha256" in _refused(config, run_dir, "different settings", resume=True)


def test_resume_refuses_fewer_steps(make_config, finished_run):
    fewer = make_config("base", max_steps=3, save_every=2, keep_last=10, adapter={"dropout": 0.1})
    message = _refused(fewer, Path(fewer.train.output_dir), "max_steps 4 -> 3", resume=True)
    assert "may only grow" in message


def test_a_different_number_of_processes_is_a_difference():
    stored = {"train": {"lr": 0.01}}
    state = TrainerState(step=2, num_processes=2, data_sha256="a" * 64)
    assert differing_settings(stored, stored, state, num_processes=1, data_sha256="a" * 64) == ["processes 2 -> 1"]
    assert differing_settings(stored, stored, state, num_processes=2, data_sha256="a" * 64) == []


def test_resuming_a_finished_run_changes_nothing(finished_run):
    run_dir = Path(finished_run.train.output_dir)
    before = _snapshot(run_dir)
    result = run_training(finished_run, resume=True)
    assert result.already_finished and result.steps == 4
    assert result.last_loss == [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r][-1]
    assert _snapshot(run_dir) == before


def test_extended_run_keeps_training_on_the_stretched_schedule(make_config, finished_run):
    run_dir = Path(finished_run.train.output_dir)
    before = _adapter(run_dir)
    # more steps plus other cadences: allowed
    longer = make_config("base", max_steps=8, save_every=4, keep_last=3, log_every=1, adapter={"dropout": 0.1})
    result = run_training(longer, resume=True)
    assert result.steps == 8 and not result.already_finished
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    # cosine from 0.01 to 0 over the new total of 8 steps, no warm-up: step s uses 0.005 * (1 + cos(pi (s-1) / 7))
    for row in rows[4:]:
        assert row["lr"] == pytest.approx(0.005 * (1 + math.cos(math.pi * (row["step"] - 1) / 7)), rel=1e-9)
    assert all(row["lr"] > 1e-4 for row in rows[4:7])
    after = _adapter(run_dir)
    assert all(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
    state = json.loads((run_dir / CKPT.format(8) / "trainer_state.json").read_text())
    assert state["total_steps"] == 8
    assert "max_steps: 8" in (run_dir / "config.yaml").read_text()


# --- damaged checkpoints ------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    weights = path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _remove_optimizer(path: Path) -> None:
    (path / "optimizer.pt").unlink()


def _garble_scheduler(path: Path) -> None:
    text = (path / "scheduler.json").read_text()
    (path / "scheduler.json").write_text(text.replace("0", "1", 1))  # still valid JSON: only the manifest sees it


@pytest.mark.parametrize("damage", [_truncate, _remove_optimizer, _garble_scheduler])
def test_damaged_latest_checkpoint_is_skipped_with_a_warning(finished_run, damage, capsys):
    run_dir = Path(finished_run.train.output_dir)
    damage(run_dir / CKPT.format(4))
    assert resolve_resume(run_dir, True) == run_dir / CKPT.format(2)
    warning = capsys.readouterr().err
    assert warning.startswith("warning: ") and warning.count("\n") == 1
    assert "step-00000004" in warning and "resuming from" in warning


def test_resume_from_the_previous_intact_checkpoint_reproduces_the_run(finished_run, capsys):
    run_dir = Path(finished_run.train.output_dir)
    whole = _adapter(run_dir)
    _truncate(run_dir / CKPT.format(4))
    result = run_training(finished_run, resume=True)
    assert "skipping damaged checkpoint" in capsys.readouterr().err
    assert result.steps == 4 and not result.already_finished
    again = _adapter(run_dir)
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_no_intact_checkpoint_is_one_error_line(finished_run):
    run_dir = Path(finished_run.train.output_dir)
    _truncate(run_dir / CKPT.format(4))
    _remove_optimizer(run_dir / CKPT.format(2))
    message = _refused(finished_run, run_dir, "no intact checkpoint", resume=True)
    assert "step-00000004" in message and "step-00000002" in message


def test_old_single_file_rng_checkpoints_still_resume_exactly(finished_run):
    run_dir = Path(finished_run.train.output_dir)
    whole = _adapter(run_dir)
    old = run_dir / CKPT.format(2)
    for suffix in ("pt", "json"):
        (old / f"rng-rank0.{suffix}").rename(old / f"rng.{suffix}")
    (old / "manifest.json").unlink()
    state = json.loads((old / "trainer_state.json").read_text())
    for key in ("total_steps", "num_processes", "data_sha256"):
        del state[key]
    (old / "trainer_state.json").write_text(json.dumps(state))
    shutil.rmtree(run_dir / CKPT.format(4))
    shutil.rmtree(run_dir / "final")
    run_training(finished_run, resume=True)
    again = _adapter(run_dir)
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_every_rank_has_its_own_rng_states(tmp_path):
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    scheduler = Schedule(peak_lr=0.1, total_steps=4).scheduler(optimizer)
    per_rank = []
    for seed in (11, 22):
        torch.manual_seed(seed)
        per_rank.append(rng_states())
    path = save_checkpoint(
        tmp_path,
        TrainerState(step=1),
        write_adapter=lambda d: None,
        optimizer=optimizer,
        scheduler=scheduler,
        config={},
        rng=per_rank,
    )
    for rank, seed in enumerate((11, 22)):
        torch.manual_seed(seed)
        assert torch.equal(read_rng_states(path, rank)[0]["torch"], torch.get_rng_state())
    with pytest.raises(ElmtuneError, match="--num-processes 2"):
        read_rng_states(path, 2)


# --- fresh runs: the output directory ----------------------------------------------------------------------------


def test_fresh_run_refuses_a_non_empty_directory_without_overwrite(make_config, tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    message = _refused(make_config("mine"), run_dir, "is not empty")
    assert str(run_dir) in message and "--overwrite" in message


def test_fresh_run_refuses_a_finished_run_whose_checkpoints_were_pruned(finished_run):
    run_dir = Path(finished_run.train.output_dir)
    shutil.rmtree(run_dir / "checkpoints")
    _refused(finished_run, run_dir, "--overwrite")


def test_overwrite_replaces_a_previous_run_but_never_foreign_files(make_config, finished_run):
    run_dir = Path(finished_run.train.output_dir)
    (run_dir / "notes.txt").write_text("keep me")
    again = make_config("base", max_steps=1)
    assert "notes.txt" in _refused(again, run_dir, "elmtune did not write", overwrite=True)
    (run_dir / "notes.txt").unlink()
    result = run_training(again, overwrite=True)
    assert result.steps == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001"]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1]


def test_output_path_that_is_a_file_or_under_a_file_is_an_error(make_config, tmp_path):
    (tmp_path / "afile").write_text("x")
    _refused(make_config("afile"), tmp_path, "is a file, not a directory")
    _refused(make_config("afile/run"), tmp_path, "is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_output_in_a_read_only_directory_is_an_error(make_config, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        _refused(make_config("ro/run"), tmp_path, "is not writable")
    finally:
        (tmp_path / "ro").chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_where_nothing_can_be_created_is_an_error(make_config):
    config = make_config("x")
    config = type(config)(
        model=config.model,
        data=config.data,
        adapter=config.adapter,
        train=type(config.train)(**{**config.train.__dict__, "output_dir": "/proc/elmtune-test/run"}),
    )
    with pytest.raises(ElmtuneError, match="cannot create the run directory /proc/elmtune-test/run") as err:
        run_training(config)
    assert "\n" not in str(err.value)


# --- one writer per run directory ---------------------------------------------------------------------------------


def test_a_held_lock_refuses_fresh_and_resumed_runs(make_config, finished_run):
    run_dir = Path(finished_run.train.output_dir)
    with RunLock(run_dir) as lock:
        lock.claim()
        before = _snapshot(run_dir)
        fresh = make_config("base", max_steps=8)
        _refused(fresh, run_dir, rf"in use by another elmtune run \(pid {os.getpid()}\)", overwrite=True)
        _refused(finished_run, run_dir, rf"in use by another elmtune run \(pid {os.getpid()}\)", resume=True)
        assert _snapshot(run_dir) == before
    longer = make_config("base", max_steps=5, save_every=2, keep_last=10, adapter={"dropout": 0.1})
    assert run_training(longer, resume=True).steps == 5  # released: the stale lock file blocks nobody


# --- real processes -----------------------------------------------------------------------------------------------


def test_cli_refuses_a_changed_lr_on_resume(make_config, tmp_path, train_command):
    run_dir = tmp_path / "x"
    run_training(make_config("x", max_steps=2))
    before = _snapshot(run_dir)
    cmd = train_command(run_dir, "--max-steps", "2", "--resume")
    cmd[cmd.index("--lr") + 1] = "2e-2"
    refused = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: --resume: {run_dir} was started with different settings: train.lr 0.01 -> 0.02; resume with the "
        "stored settings or start a new run in another --output-dir"
    ]
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_cli_overwrite_refusal_and_concurrent_writer(tmp_path, train_command):
    run_dir = tmp_path / "x"
    long_run = subprocess.Popen(
        train_command(run_dir, "--max-steps", "100000", "--save-every", "1"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (run_dir / CKPT.format(1)).is_dir() and time.time() < deadline:
            time.sleep(0.1)
        assert (run_dir / CKPT.format(1)).is_dir() and long_run.poll() is None
        os.kill(long_run.pid, signal.SIGSTOP)  # still holds the lock, writes nothing while we compare
        before = _snapshot(run_dir)
        for extra in (("--overwrite",), ("--resume",)):
            second = subprocess.run(
                train_command(run_dir, "--max-steps", "100000", "--save-every", "1", *extra),
                env=ENV,
                capture_output=True,
                text=True,
            )
            assert second.returncode == 1
            assert second.stderr.strip().splitlines() == [
                f"error: {run_dir} is in use by another elmtune run (pid {long_run.pid})"
            ]
        assert _snapshot(run_dir) == before
    finally:
        long_run.kill()
        os.kill(long_run.pid, signal.SIGCONT)
        long_run.wait()
    before = _snapshot(run_dir)
    refused = subprocess.run(train_command(run_dir, "--max-steps", "1"), env=ENV, capture_output=True)
    assert refused.returncode == 1
    assert f"error: --output-dir {run_dir} is not empty".encode() in refused.stderr
    assert b"pass --resume to continue the run in it" in refused.stderr and refused.stderr.count(b"\n") == 1
    assert _snapshot(run_dir) == before
    replaced = subprocess.run(train_command(run_dir, "--max-steps", "1", "--overwrite"), env=ENV, capture_output=True)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001"]


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc; torchrun starts its workers in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree, grew = tree | children, bool(children)
    return sorted(tree)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the worker processes in /proc")
def test_two_process_kill_and_resume_is_bit_identical(tmp_path, train_command):
    # dropout on: each process draws its own dropout masks, so each process's RNG state must be restored
    common = ("--num-processes", "2", "--max-steps", "8", "--save-every", "2", "--keep-last", "10")

    def cli(run_dir, *extra):
        cmd = train_command(run_dir, *common, *extra)
        cmd[cmd.index("--batch-size") + 1] = "2"
        cmd[cmd.index("--dropout") + 1] = "0.1"
        return cmd

    whole = subprocess.run(cli(tmp_path / "whole"), env=ENV, capture_output=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(killed),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics, deadline = killed / "metrics.jsonl", time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and any(r.get("step", 0) >= 5 for r in read_metrics(metrics)):
            break
        time.sleep(0.05)
    tree = _process_tree(proc.pid)
    assert len(tree) >= 4  # the command, torchrun and two workers
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    assert not (killed / "final").exists()
    assert not (killed / CKPT.format(8)).exists()
    assert sorted(p.name for p in (killed / CKPT.format(4)).glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]
    resumed = subprocess.run(cli(killed, "--resume"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _adapter(tmp_path / "whole"), _adapter(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

"""``--report-to``: real tiny runs send every ``metrics.jsonl`` row and the run configuration to TensorBoard, MLflow
and wandb (offline), read back with each tracker's own reader; bad values and missing packages are refused before any
work, and a failed run still closes its trackers."""

from __future__ import annotations

import json
import os
import struct
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from elmtune.cli.app import main
from elmtune.errors import ConfigError
from elmtune.finetune.config import TrainConfig, load_run_config
from elmtune.finetune.run import run_training
from elmtune.finetune.run_lock import lock_holder

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "commonsense_train_sample200.json"


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _expected_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Tracker name -> [(step, value)] of every finite number of metrics.jsonl, named as Transformers' Trainer names
    them in its trackers (``eval_loss`` -> ``eval/loss``, ``loss`` -> ``train/loss``)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in _rows(run_dir):
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = "eval/" + key.removeprefix("eval_") if key.startswith("eval_") else "train/" + key
            series[name].append((row["step"], value))
    return dict(series)


def _run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``elmtune ARGV`` as the console script runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["elmtune", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def no_user_trackers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No tracker settings from the environment; wandb's own files (config, cache) inside tmp_path."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS", "MLFLOW_NESTED_RUN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` credentials
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # leave pytest's capture of stdout/stderr alone


# --- the setting ---------------------------------------------------------------------------------------------------


def test_report_to_takes_lists_comma_lists_and_none():
    assert TrainConfig().report_to == ()
    assert TrainConfig(report_to="TensorBoard, mlflow").report_to == ("tensorboard", "mlflow")
    assert TrainConfig(report_to=("wandb,tensorboard", "wandb")).report_to == ("wandb", "tensorboard")
    assert TrainConfig(report_to=("none",)).report_to == ()
    flags = load_run_config(None, {"model": "tiny", "data.path": "x.json", "train.report_to": ["mlflow", "wandb"]})
    assert flags.train.report_to == ("mlflow", "wandb")
    assert flags.to_dict()["train"]["report_to"] == ["mlflow", "wandb"]  # config.yaml holds a plain list


def test_an_unknown_tracker_in_a_recipe_is_a_config_error_naming_the_key(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: tiny\ndata: {{path: {DATA}}}\ntrain: {{report_to: [tensorboard, comet]}}\n")
    with pytest.raises(ConfigError, match=r"train.report_to 'comet' is not a tracker; choose from") as err:
        load_run_config(recipe)
    assert err.value.key == "train.report_to"


def test_build_training_stages_take_report_to_in_their_train_settings():
    from elmtune.build.recipe import parse_build_recipe

    def stage(train):
        return {"model": "tiny", "stages": [{"name": "sft", "kind": "sft", "data": {"path": "x.json"}, "train": train}]}

    assert parse_build_recipe(stage({"report_to": "tensorboard,mlflow"})).stages[0].settings.train.report_to == (
        "tensorboard",
        "mlflow",
    )
    with pytest.raises(ConfigError, match=r"stage 'sft' \(sft\): train.report_to 'comet' is not a tracker"):
        parse_build_recipe(stage({"report_to": ["comet"]}))


def test_an_unknown_tracker_flag_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, err = _run_main(
        ["train", "-m", "tiny", "-d", str(DATA), "-o", str(out), "--report-to", "tensorbord"], monkeypatch, capsys
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: train.report_to 'tensorbord' is not a tracker; choose from tensorboard, wandb, mlflow (or none) "
        "(flag --report-to)"
    )
    assert "Traceback" not in err and not out.exists()


def test_a_missing_tracker_package_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import elmtune.finetune.trackers as trackers

    monkeypatch.setattr(trackers, "package_installed", lambda module: module != "wandb")
    out = tmp_path / "out"
    argv = ["train", "-m", "tiny", "-d", str(DATA), "-o", str(out), "--max-steps", "1", "--report-to", "tensorboard"]
    code, err = _run_main([*argv, "--report-to", "wandb"], monkeypatch, capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: train.report_to wandb: not installed; run pip install 'elmtune[trackers]'")
    assert "(or pip install wandb)" in last and "Traceback" not in err
    assert not out.exists()  # nothing was created, let alone trained


# --- real runs, read back -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_and_mlflow_receive_every_metrics_row_and_the_configuration(
    make_dpo_config, no_user_trackers, monkeypatch
):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_dpo_config(
        "dpo-tracked", data={"validation_size": 4}, max_steps=2, eval_every=1, report_to=("tensorboard", "mlflow")
    )
    run_dir = Path(config.train.output_dir)
    run_training(config)
    expected = _expected_series(run_dir)
    # the DPO metrics under TRL's names, training and validation
    assert {"train/loss", "train/rewards/accuracies", "train/logps/chosen", "eval/loss", "eval/rewards/margins"} <= set(
        expected
    )
    assert [step for step, _ in expected["eval/loss"]] == [1, 2] and len(expected["train/loss"]) == 2

    events = EventAccumulator(str(run_dir / "trackers" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    for name, points in expected.items():  # TensorBoard stores float32
        assert [(e.step, e.value) for e in events.Scalars(name)] == [(s, float(np.float32(v))) for s, v in points]
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    (hparams_file,) = (run_dir / "trackers" / "tensorboard").glob("*/hparams.yml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["model"] == "tiny" and hparams["train.beta"] == stored["train"]["beta"] == 0.5
    assert hparams["train.objective"] == "dpo" and hparams["data.validation_size"] == 4
    assert json.loads(hparams["train.report_to"]) == ["tensorboard", "mlflow"]

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # newer MLflow keeps the file store behind this switch
    client = mlflow.MlflowClient(tracking_uri=(run_dir / "trackers" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("elmtune").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "dpo-tracked"
    assert set(run.data.metrics) == set(expected)
    for name, points in expected.items():  # MLflow keeps float64
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)] == points
    params = run.data.params
    assert params["train.lr"] == str(stored["train"]["lr"]) and params["train.max_steps"] == "2"
    assert params["adapter.r"] == "4" and json.loads(params["train.betas"]) == stored["train"]["betas"]
    assert params["data.path"] == stored["data"]["path"]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the run's store was set for the run only


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a wandb ``.wandb`` file: a 7-byte header, then LevelDB-style log blocks of 32 KiB whose records
    have a 7-byte header (CRC32, length, type: full, first, middle, last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


@pytest.mark.slow
def test_wandb_without_setup_runs_offline_in_the_run_directory_and_mlflow_honours_a_given_store(
    make_config, no_user_trackers, monkeypatch, tmp_path, capsys
):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    from wandb.proto import wandb_internal_pb2

    store = (tmp_path / "user-mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "my-experiment")
    config = make_config("sft-wandb", max_steps=2, report_to=("wandb", "mlflow"))
    run_dir = Path(config.train.output_dir)
    run_training(config)
    assert (
        "wandb: no API key (WANDB_API_KEY or wandb login) and no WANDB_MODE: logging offline" in capsys.readouterr().err
    )
    (offline,) = (run_dir / "trackers" / "wandb").glob("offline-run-*")
    (log_file,) = offline.glob("run-*.wandb")
    history: dict[int, dict[str, float]] = defaultdict(dict)
    config_items = {}
    for raw in _wandb_records(log_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                history[record.history.step.num][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif record.WhichOneof("record_type") == "config":
            config_items.update({item.key: json.loads(item.value_json) for item in record.config.update})
    expected = _expected_series(run_dir)
    for name, points in expected.items():
        assert [(step, history[step].get(name)) for step, _ in points] == points, name
    assert config_items["model"] == "tiny" and config_items["train.max_steps"] == 2
    assert not (run_dir / "trackers" / "mlruns").exists()  # the store the user named, not the run directory's
    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("my-experiment").experiment_id])
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == expected[
        "train/loss"
    ]


def test_a_failed_run_closes_its_trackers_and_marks_the_mlflow_run_failed(make_config, no_user_trackers, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    import elmtune.finetune.run as run_module
    from elmtune.finetune.trackers import log_row

    def fail(model, objective, data, cfg, *, accelerator, **kwargs):
        log_row(accelerator, {"step": 0, "loss": 2.5, "note": "text is not sent"})
        raise RuntimeError("interrupted")

    monkeypatch.setattr(run_module, "train", fail)
    config = make_config("failed", report_to=("tensorboard", "mlflow"))
    run_dir = Path(config.train.output_dir)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_training(config)
    assert lock_holder(run_dir) is None
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.active_run() is None
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(run_dir / "trackers" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("elmtune").experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics == {"train/loss": 2.5}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "trackers" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(0, 2.5)]


def test_overwrite_replaces_a_previous_runs_tracker_files(make_config, no_user_trackers):
    pytest.importorskip("tensorboard")
    config = make_config("again", max_steps=1, report_to=("tensorboard",))
    run_dir = Path(config.train.output_dir)
    run_training(config)
    first = sorted(p.name for p in (run_dir / "trackers" / "tensorboard").glob("events.out.tfevents.*"))
    assert first
    run_training(config, overwrite=True)
    second = sorted(p.name for p in (run_dir / "trackers" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(second) == 1 and second != first  # the previous run's event file is gone


def test_a_resumed_run_continues_its_tracker_runs(make_config, no_user_trackers, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config("resumed", max_steps=3, save_every=1, keep_last=5, report_to=("tensorboard", "mlflow"))
    run_dir = Path(config.train.output_dir)
    run_training(config)
    uninterrupted = _expected_series(run_dir)
    # as if the run had stopped after step 3 before its final save, with step 1 its last intact checkpoint
    for name in ("step-00000002", "step-00000003"):
        shutil.rmtree(run_dir / "checkpoints" / name)
    shutil.rmtree(run_dir / "final")
    run_training(config, resume=True)
    expected = _expected_series(run_dir)
    assert [step for step, _ in expected["train/loss"]] == [1, 2, 3]
    assert [v for _, v in expected["train/loss"]] == [v for _, v in uninterrupted["train/loss"]]  # exact resume

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(run_dir / "trackers" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("elmtune").experiment_id])  # one run, continued
    assert run.info.status == "FINISHED" and run.info.run_name == "resumed"
    ids = json.loads((run_dir / "trackers" / "runs.json").read_text())
    assert ids == {"mlflow": run.info.run_id}
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    # steps 2 and 3 were logged by both runs, with the same values
    assert sorted(history) == sorted(expected["train/loss"] + expected["train/loss"][1:])

    events = EventAccumulator(str(run_dir / "trackers" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    # the second run's purge_step hides what the first logged after step 1: each step once
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


@pytest.mark.slow
def test_a_resumed_offline_wandb_run_keeps_its_run_id(make_config, no_user_trackers):
    pytest.importorskip("wandb")
    import shutil

    config = make_config("wandb-resumed", max_steps=2, save_every=1, keep_last=5, report_to=("wandb",))
    run_dir = Path(config.train.output_dir)
    run_training(config)
    (first,) = (run_dir / "trackers" / "wandb").glob("offline-run-*")
    shutil.rmtree(run_dir / "checkpoints" / "step-00000002")
    shutil.rmtree(run_dir / "final")
    run_training(config, resume=True)
    runs = sorted((run_dir / "trackers" / "wandb").glob("offline-run-*"))
    run_id = json.loads((run_dir / "trackers" / "runs.json").read_text())["wandb"]
    assert len(runs) == 2 and first in runs  # offline: a second local run directory ...
    # ... of the same wandb run: each directory's log is run-<id>.wandb (the directory name may end in a counter
    # instead, when both runs started within the same second)
    assert {next(path.glob("run-*.wandb")).stem.removeprefix("run-") for path in runs} == {run_id}

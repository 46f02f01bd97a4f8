"""Experiment trackers (``report_to``): TensorBoard, Weights & Biases and MLflow, through accelerate's trackers.

A run sends every row it writes to ``metrics.jsonl`` to the trackers named in ``train.report_to`` (``--report-to``),
at the row's step, under the names Transformers' ``Trainer`` and TRL use: ``eval_X`` becomes ``eval/X`` and every
other field ``train/X`` (``train/loss``, ``train/rewards/accuracies``, ``eval/loss``...); text and the step itself
are not sent. The run configuration goes along as hyper-parameters, flattened to dotted keys (``train.lr``).

Local tracker files go to ``RUN_DIR/trackers/`` so the run directory keeps describing itself:

- ``tensorboard``: event files in ``trackers/tensorboard/``.
- ``wandb``: ``trackers/wandb/`` unless ``WANDB_DIR`` says otherwise; ``WANDB_PROJECT`` (default ``elmtune``),
  ``WANDB_NAME`` (default the run directory's name), ``WANDB_MODE``, ``WANDB_ENTITY``... are honoured. Without
  ``WANDB_MODE`` and without an API key (``WANDB_API_KEY`` or ``wandb login``), the run is logged offline and a line
  says how to upload it: nothing goes over the network unless the user set wandb up.
- ``mlflow``: the tracking store ``MLFLOW_TRACKING_URI`` names; without one, a file store in ``trackers/mlruns/``.
  ``MLFLOW_EXPERIMENT_NAME`` (default ``elmtune``) and the other variables of accelerate's tracker are honoured.

Only the main process logs. The trackers are closed when the run ends, also when it fails (MLflow marks the run
``FAILED``, wandb records exit code 1).

A resumed run (``--resume``) continues its trackers' runs rather than opening new ones: the wandb run id and the
MLflow run id are kept in ``trackers/runs.json`` when a run starts, and a resume passes them back (wandb
``resume="allow"``; MLflow ``start_run(run_id=...)``). TensorBoard writes to the same directory with ``purge_step``
one past the checkpoint, so what the interrupted run logged after its checkpoint is hidden. wandb drops rows at steps
it has already seen, and MLflow keeps both values of such a step; single-process resume is exact, so they agree. A
tracker that the first run did not use starts a new run when it is added on resume.

Each tracker's package is checked before any work (:func:`require_tracker_packages`). This module imports neither
torch nor accelerate at import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import netrc
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from elmtune.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

PROJECT = "elmtune"
"""The default wandb project and MLflow experiment."""

TRACKERS_DIR = "trackers"
"""The run directory's entry that holds the trackers' local files."""

RUN_IDS = "runs.json"
"""The file in ``trackers/`` that keeps each tracker's run id (wandb, MLflow), so that a resume continues the run."""


@dataclass(frozen=True)
class TrackerPackage:
    """What a tracker needs installed.

    Attributes:
        module: The module it imports.
        pip_name: The package that provides it.
    """

    module: str
    pip_name: str


TRACKER_PACKAGES: dict[str, TrackerPackage] = {
    "tensorboard": TrackerPackage("tensorboard", "tensorboard"),
    "wandb": TrackerPackage("wandb", "wandb"),
    "mlflow": TrackerPackage("mlflow", "mlflow-skinny"),
}
"""The trackers ``report_to`` accepts, by name."""


def package_installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    return importlib.util.find_spec(module) is not None


def require_tracker_packages(report_to: Sequence[str]) -> None:
    """Refuse a run whose trackers are not installed, before any work.

    Raises:
        ConfigError: One line naming the trackers whose package is missing and the ``pip install`` to run.
    """
    missing = [name for name in report_to if not package_installed(TRACKER_PACKAGES[name].module)]
    if missing:
        packages = " ".join(TRACKER_PACKAGES[name].pip_name for name in missing)
        raise ConfigError(
            f"train.report_to {', '.join(missing)}: not installed; run pip install 'elmtune[trackers]' "
            f"(or pip install {packages}), or leave it out of --report-to",
            key="train.report_to",
        )


def tracker_values(row: Mapping[str, Any]) -> dict[str, int | float]:
    """The scalars of a ``metrics.jsonl`` row, under the names Transformers' trackers use.

    ``eval_loss`` -> ``eval/loss``, ``loss`` -> ``train/loss``; the step, booleans and text are left out.
    """
    values: dict[str, int | float] = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values[f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"] = value
    return values


def hyperparameters(run_config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The run configuration as flat hyper-parameters: dotted keys; lists and nulls as JSON (``"[0.9, 0.999]"``)."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in run_config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def _wandb_credentials() -> bool:
    """Whether wandb has an API key to use: ``WANDB_API_KEY``, or a ``.netrc`` entry for its host (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_settings(run_dir: Path) -> dict[str, Any]:
    """``wandb.init`` arguments: the run directory's ``trackers/``, its name, offline mode when wandb is not set up.

    An environment variable the user set (``WANDB_DIR``, ``WANDB_NAME``, ``WANDB_MODE``) wins over each.
    """
    settings: dict[str, Any] = {}
    if not os.environ.get("WANDB_DIR"):
        settings["dir"] = str(run_dir / TRACKERS_DIR)
    if not os.environ.get("WANDB_NAME"):
        settings["name"] = run_dir.resolve().name
    if not os.environ.get("WANDB_MODE") and not _wandb_credentials():
        settings["mode"] = "offline"
    return settings


def _say_if_offline(tracker: GeneralTracker) -> None:
    """Print where a wandb run that is offline because wandb is not set up goes, and how to upload it."""
    if tracker.name == "wandb" and tracker.init_kwargs.get("mode") == "offline":
        where = tracker.init_kwargs.get("dir") or os.environ.get("WANDB_DIR")
        print(
            f"wandb: no API key (WANDB_API_KEY or wandb login) and no WANDB_MODE: logging offline under {where}/wandb; "
            "upload it later with wandb sync",
            file=sys.stderr,
            flush=True,
        )


def stored_run_ids(run_dir: Path) -> dict[str, str]:
    """Tracker name -> run id, as a run stored them in ``trackers/runs.json`` (empty when there is none)."""
    path = run_dir / TRACKERS_DIR / RUN_IDS
    if not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable ({error}); remove it to start new tracker runs") from error
    if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
        raise ConfigError(f"{path}: expected a JSON object of tracker names and run ids; remove it to start new runs")
    return ids


def _store_run_ids(run_dir: Path, trackers: Sequence[GeneralTracker]) -> None:
    """Add the started trackers' run ids (wandb, MLflow) to ``trackers/runs.json``."""
    ids = stored_run_ids(run_dir)
    for tracker in trackers:
        if tracker.name == "wandb":
            ids["wandb"] = tracker.run.id
        elif tracker.name == "mlflow":
            ids["mlflow"] = tracker.active_run.info.run_id
    if ids:
        (run_dir / TRACKERS_DIR / RUN_IDS).write_text(json.dumps(ids, indent=2, sort_keys=True) + "\n")


def build_trackers(report_to: Sequence[str], run_dir: Path, resumed_at: int | None = None) -> list[GeneralTracker]:
    """The accelerate tracker objects for ``report_to``, writing under ``run_dir``.

    Nothing starts yet with current accelerate (see :func:`tracking`); the packages are checked first.

    Args:
        report_to: Tracker names (``train.report_to``).
        run_dir: The run directory.
        resumed_at: The checkpoint step a resumed run continues from: the trackers continue the stored runs
            (module docstring). None for a fresh run.

    Raises:
        ConfigError: A tracker's package is not installed (see :func:`require_tracker_packages`).
    """
    if not report_to:
        return []
    require_tracker_packages(report_to)
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    ids = stored_run_ids(run_dir) if resumed_at is not None else {}
    trackers: list[GeneralTracker] = []
    for name in report_to:
        if name == "tensorboard":
            purge = {} if resumed_at is None else {"purge_step": resumed_at + 1}
            trackers.append(TensorBoardTracker("tensorboard", run_dir / TRACKERS_DIR, **purge))
        elif name == "wandb":
            resume = {"id": ids["wandb"], "resume": "allow"} if "wandb" in ids else {}
            project = os.environ.get("WANDB_PROJECT") or PROJECT
            trackers.append(WandBTracker(project, **_wandb_settings(run_dir), **resume))
        elif name == "mlflow":
            run = {"run_id": ids["mlflow"]} if "mlflow" in ids else {"run_name": run_dir.resolve().name}
            trackers.append(MLflowTracker(experiment_name=PROJECT, **run))
    return trackers


@contextlib.contextmanager
def _mlflow_store(run_dir: Path, wanted: bool) -> Iterator[None]:
    """Without a tracking URI (``MLFLOW_TRACKING_URI``), use a file store in ``run_dir/trackers/mlruns`` for the run.

    Newer MLflow keeps the file store behind ``MLFLOW_ALLOW_FILE_STORE``, which is set for the run too; both are
    restored when the run ends.
    """
    if not wanted:
        yield
        return
    import mlflow

    if mlflow.tracking.is_tracking_uri_set():  # MLFLOW_TRACKING_URI or mlflow.set_tracking_uri
        yield
        return
    allow = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri((run_dir / TRACKERS_DIR / "mlruns").resolve().as_uri())
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # back to the default; also clears MLFLOW_TRACKING_URI again
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if allow is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = allow


def _finish(tracker: GeneralTracker, failed: bool) -> None:
    """Close one tracker; a failed run is marked so where the tracker records it."""
    if failed and tracker.name == "mlflow":
        import mlflow

        mlflow.end_run(status="FAILED")
    elif failed and tracker.name == "wandb":
        tracker.run.finish(exit_code=1)
    else:
        tracker.finish()


def _close(accelerator: Accelerator, failed: bool) -> None:
    # Not accelerator.end_training(): it also destroys the process group, which later runs in the same processes need.
    for tracker in accelerator.trackers:
        if failed:
            with contextlib.suppress(Exception):  # a tracker that failed to start has nothing to close
                _finish(tracker, failed)
        else:
            _finish(tracker, failed)
    accelerator.trackers.clear()


@contextlib.contextmanager
def tracking(
    accelerator: Accelerator,
    run_dir: Path,
    run_config: Mapping[str, Any],
    report_to: Sequence[str],
    resumed_at: int | None = None,
) -> Iterator[None]:
    """Start the run's trackers with its hyper-parameters on the main process, and close them when the block ends.

    Args:
        accelerator: The run's accelerator (created without trackers: they are built and started here).
        run_dir: The run directory (created already).
        run_config: The full run configuration (``RunConfig.to_dict()``).
        report_to: Tracker names (``train.report_to``).
        resumed_at: The checkpoint step of a resumed run (see :func:`build_trackers`); None for a fresh run.
    """
    if not report_to or not accelerator.is_main_process:
        yield
        return
    (run_dir / TRACKERS_DIR).mkdir(parents=True, exist_ok=True)
    with _mlflow_store(run_dir, "mlflow" in report_to):
        try:
            accelerator.log_with = build_trackers(report_to, run_dir, resumed_at)
            for tracker in accelerator.log_with:
                _say_if_offline(tracker)
            accelerator.init_trackers(PROJECT, config=hyperparameters(run_config))
            _store_run_ids(run_dir, accelerator.trackers)
            yield
        except BaseException:
            _close(accelerator, failed=True)
            raise
        _close(accelerator, failed=False)


def log_row(accelerator: Accelerator, row: Mapping[str, Any]) -> None:
    """Send a ``metrics.jsonl`` row to the run's trackers at its step (nothing when there are none)."""
    if accelerator.trackers:
        accelerator.log(tracker_values(row), step=int(row["step"]))


__all__ = [
    "TRACKER_PACKAGES",
    "TrackerPackage",
    "build_trackers",
    "hyperparameters",
    "log_row",
    "package_installed",
    "require_tracker_packages",
    "stored_run_ids",
    "tracker_values",
    "tracking",
]

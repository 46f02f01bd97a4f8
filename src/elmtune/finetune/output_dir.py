"""The run directory of a fresh run: never clobbered unless asked, checked before anything is written.

A fresh run needs an empty or absent directory in a writable location. ``--overwrite`` replaces a previous elmtune
run in it; it deletes only what elmtune writes (:data:`RUN_ENTRIES`) and refuses a directory holding anything else,
so a mistyped ``--output-dir`` cannot wipe unrelated files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from elmtune.errors import ElmtuneError, UsageError
from elmtune.finetune.run_lock import LOCK_FILE, lock_holder

RUN_ENTRIES = frozenset(
    {
        "config.yaml",
        "metrics.jsonl",
        "data_report.json",
        "checkpoints",
        "final",
        "loss_curve.png",
        "report.md",
        "report.html",
        "report_loss.png",
        "report_rewards.png",
        "reference_logps.safetensors",
        "reference_logps.json",
        "trackers",
        LOCK_FILE,
    }
)
STAGING_PREFIXES = (".final.", ".tmp-", ".reference_logps.")
"""Hidden siblings left by a killed run: ``final/`` or the reference cache being staged or replaced (``.tmp-*`` from
earlier versions)."""


def _is_run_entry(name: str) -> bool:
    return name in RUN_ENTRIES or name.startswith(STAGING_PREFIXES)


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _require_writable_location(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ElmtuneError(f"--output-dir {run_dir} is a file, not a directory; choose another --output-dir")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ElmtuneError(
            f"--output-dir {run_dir}: {existing} is a file, not a directory; choose another --output-dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ElmtuneError(f"--output-dir {run_dir}: {existing} is not writable; choose another --output-dir")


def check_fresh_output_dir(run_dir: Path, *, overwrite: bool, locked: bool = False) -> None:
    """Check, writing nothing, that a fresh run may use ``run_dir``.

    Args:
        run_dir: The ``--output-dir``.
        overwrite: ``--overwrite`` was given: a previous elmtune run in ``run_dir`` may be replaced.
        locked: This process holds the run lock already (the check is repeated under it).

    Raises:
        ElmtuneError: ``run_dir`` is a file, in a read-only location, in use by another run, not empty (without
            ``overwrite``), or holds files elmtune did not write (with ``overwrite``).
    """
    _require_writable_location(run_dir)
    if not run_dir.is_dir():
        return
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if not names:
        return
    holder = None if locked else lock_holder(run_dir)
    if holder:
        raise ElmtuneError(f"{run_dir} is in use by another elmtune run ({holder})")
    if not overwrite:
        resume = " pass --resume to continue the run in it," if "checkpoints" in names else ""
        raise ElmtuneError(
            f"--output-dir {run_dir} is not empty (it holds {_listing(names)});{resume} pass --overwrite to replace "
            "it, or choose another --output-dir"
        )
    foreign = [name for name in names if not _is_run_entry(name)]
    if foreign:
        raise ElmtuneError(
            f"--overwrite: {run_dir} holds files elmtune did not write ({_listing(foreign)}); --overwrite replaces "
            "only an elmtune run: choose another --output-dir"
        )


def create_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents).

    Raises:
        ElmtuneError: It cannot be created (read-only location, a file in the way).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ElmtuneError(
            f"cannot create the run directory {run_dir} ({err.strerror}); choose another --output-dir"
        ) from None


def clear_previous_run(run_dir: Path) -> None:
    """Delete what a previous elmtune run left in ``run_dir`` (``--overwrite``; call with the run lock held)."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE or not _is_run_entry(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_recipe_output_dir(recipe: Path, output_dir: str, *, confirmed: bool) -> Path:
    """Resolve a run directory that a recipe (not ``-o``) names, and refuse one outside the working directory.

    A recipe copied from elsewhere may name ``../../somewhere``: such a relative path is shown in full and used only
    when confirmed (``--overwrite``); an absolute path is taken as written.

    Args:
        recipe: The recipe file.
        output_dir: Its ``train.output_dir``.
        confirmed: The user passed ``--overwrite``.

    Returns:
        The resolved run directory.

    Raises:
        UsageError: A relative ``output_dir`` that leaves the working directory, unconfirmed.
    """
    path = Path(output_dir).expanduser()
    resolved = path.resolve()
    inside = resolved == Path.cwd().resolve() or Path.cwd().resolve() in resolved.parents
    if not path.is_absolute() and not inside and not confirmed:
        raise UsageError(
            f"{recipe}: train.output_dir '{output_dir}' resolves to {resolved}, outside the working directory; "
            "pass -o with the directory you want, write an absolute output_dir, or confirm with --overwrite"
        )
    return resolved

"""One writer per run directory: an exclusive ``flock`` on ``DIR/.lock``, held for the whole run.

The kernel releases a ``flock`` when its holder exits, however it exits, so a lock file left by a killed run never
blocks a later one. The file holds the holder's pid, written by :meth:`RunLock.claim` once the run has passed its
checks (so a refused command leaves the file as it was); another run that finds the lock held names that pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from elmtune.errors import ElmtuneError

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory (a context manager; :meth:`release` is idempotent)."""

    def __init__(self, run_dir: Path) -> None:
        """Take the lock on ``run_dir`` (which must exist) without waiting.

        Raises:
            ElmtuneError: Another process holds it, or the lock file cannot be created (read-only location).
        """
        self.path = run_dir / LOCK_FILE
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ElmtuneError(
                f"cannot write to the run directory {run_dir} ({err.strerror}); choose another --output-dir"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise ElmtuneError(f"{run_dir} is in use by another elmtune run ({_holder(self.path)})") from None

    def claim(self) -> None:
        """Record this process's pid in the lock file (call once the run is allowed to start writing)."""
        if self._fd is None:
            raise RuntimeError("the run lock was released")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Release the lock (the file stays; an unlocked file blocks nobody)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the lock on ``run_dir`` (``"pid N"``), or None when nobody does; creates and changes nothing.

    Probes with a shared lock on a read-only handle, which an exclusive holder blocks.
    """
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    finally:
        os.close(fd)  # closing the handle releases the probe's lock
    return None


def _holder(path: Path) -> str:
    """``pid N`` of the lock's holder, as far as the file tells (it may still be checking its settings)."""
    text = path.read_text().strip() if path.is_file() else ""
    if text.isdigit() and _alive(int(text)):
        return f"pid {int(text)}"
    return "starting up; pid not recorded yet"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Outputs of the writing commands: checked before any work, built as a hidden sibling, moved into place whole.

Every command that writes a result (``eval``, ``export``, ``merge``, ``merge-adapters``) goes through this module:

1. :func:`check_output_dir` / :func:`check_output_file` vet the target before anything is computed: a file where a
   directory is expected (or the reverse), a parent that is a file, a parent that is not writable, or an existing
   non-empty target without ``overwrite`` is an :class:`~elmtune.errors.ElmtuneError` with a one-line message.
2. :class:`StagedDirectory` / :class:`StagedFile` (context managers, which run the same check) create a hidden
   sibling of the target (``.NAME.partial-XXXX``) and hand it to the caller to fill.
3. ``commit()`` flushes the sibling's files to disk (fsync), moves the sibling into place and flushes the parent
   directory, so the new name survives a power cut only with complete contents; an old target (``overwrite``) is
   moved aside first and deleted only once the new one is in place. Leaving the block without ``commit()`` (an
   exception, a failed check, a full disk, Ctrl-C) deletes the sibling, so the target stays as it was and nothing
   half-written is left behind.

A full disk, a quota, a file too large or a read-only file system while writing becomes :class:`OutputWriteError`
(one line naming the target), after the sibling is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from elmtune.errors import ElmtuneError

_WRITE_HINTS = {
    errno.ENOSPC: "free some space or choose another -o",
    errno.EDQUOT: "free some space (disk quota exceeded) or choose another -o",
    errno.EFBIG: "the file is too large for this file system; choose another -o",
    errno.EROFS: "the file system is read-only; choose another -o",
}
"""errno of a failed write -> what the user can do; other errors propagate unchanged."""


class OutputPathError(ElmtuneError):
    """The output path cannot be written: wrong kind (file vs directory), a parent that is a file, or read-only."""


class OutputExistsError(OutputPathError):
    """The output exists, is not empty, and overwriting was not requested."""


class OutputWriteError(ElmtuneError):
    """Writing the output failed for lack of space or a read-only file system; nothing was left behind."""


def _absolute(target: Path) -> Path:
    """``target`` made absolute and normalised (``.`` and ``..`` resolved lexically), for names and parents."""
    return Path(os.path.abspath(target))


def _check_parent(target: Path) -> None:
    """The nearest existing ancestor of ``target`` must be a writable directory."""
    ancestor = _absolute(target).parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot create {target}: {ancestor} is a file, not a directory; choose another -o")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"cannot write {target}: directory {ancestor} is not writable; choose another -o or change its permissions"
        )


def check_output_dir(target: str | Path, *, overwrite: bool = False) -> Path:
    """Check that ``target`` can become an output directory, before any work is done.

    Args:
        target: The directory to create.
        overwrite: Accept an existing non-empty directory (it is replaced on commit).

    Returns:
        ``target`` as a path (``~`` expanded).

    Raises:
        OutputPathError: ``target`` is a file, a parent is a file, or the parent is not writable.
        OutputExistsError: ``target`` is a non-empty directory and ``overwrite`` is false.
    """
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise OutputPathError(
            f"output {target} is a file, but a directory is expected; choose another -o or remove the file"
        )
    if target.is_dir() and not overwrite:
        try:
            empty = not any(target.iterdir())
        except OSError as err:
            raise OutputPathError(f"cannot read output directory {target}: {err.strerror}; choose another -o") from None
        if not empty:
            raise OutputExistsError(
                f"output directory {target} exists and is not empty; pass --overwrite to replace it"
            )
    _check_parent(target)
    return target


def check_output_file(target: str | Path, *, overwrite: bool = False) -> Path:
    """Check that ``target`` can become an output file, before any work is done.

    Args:
        target: The file to create.
        overwrite: Accept an existing non-empty file (it is replaced on commit).

    Returns:
        ``target`` as a path (``~`` expanded).

    Raises:
        OutputPathError: ``target`` is a directory, a parent is a file, or the parent is not writable.
        OutputExistsError: ``target`` is a non-empty file and ``overwrite`` is false.
    """
    target = Path(target).expanduser()
    if target.is_dir():
        raise OutputPathError(f"output {target} is a directory, but a file is expected; give the path of a file")
    if target.exists() and target.stat().st_size > 0 and not overwrite:
        raise OutputExistsError(f"output file {target} exists; pass --overwrite to replace it")
    _check_parent(target)
    return target


def _default_mode(directory: bool) -> int:
    """The permissions a plain ``mkdir`` / ``open(..., "w")`` would give (tempfile makes private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _write_error(err: OSError, target: Path) -> OutputWriteError | None:
    hint = _WRITE_HINTS.get(err.errno) if isinstance(err.errno, int) else None
    if hint is None:
        return None
    return OutputWriteError(f"cannot write {target}: {err.strerror or err}; nothing was written ({hint})")


@contextlib.contextmanager
def removed_on_failure(partial: Path, target: Path) -> Iterator[Path]:
    """Delete the half-written ``partial`` (a file or directory) if the block fails, then re-raise.

    For writers that stage and rename by themselves (training checkpoints and ``final/``). A full disk, quota or
    read-only file system becomes one :class:`OutputWriteError` line naming ``target``.
    """
    try:
        yield partial
    except BaseException as err:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        converted = _write_error(err, target) if isinstance(err, OSError) else None
        if converted is not None:
            raise converted from None
        raise


def _fsync(path: Path) -> None:
    """Flush one file's (or one directory's entries') data to disk."""
    if os.name == "nt" and path.is_dir():
        return  # Windows cannot open a directory to flush it; its renames are durable on their own
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file and directory under a directory, to disk (symbolic links are not followed)."""
    if not path.is_dir():
        _fsync(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            if not (Path(root) / name).is_symlink():
                _fsync(Path(root) / name)
        _fsync(Path(root))


class _Staged:
    """What :class:`StagedDirectory` and :class:`StagedFile` share: staging, commit and cleanup."""

    is_directory = True

    def __init__(self, target: str | Path, *, overwrite: bool = False) -> None:
        check = check_output_dir if self.is_directory else check_output_file
        self.target = check(target, overwrite=overwrite)
        self.overwrite = overwrite
        self.path: Path | None = None
        self._where = _absolute(self.target)

    def _create(self) -> Path:
        prefix = f".{self._where.name}.partial-"
        if self.is_directory:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=self._where.parent))
        else:
            handle, name = tempfile.mkstemp(prefix=prefix, dir=self._where.parent)
            os.close(handle)
            path = Path(name)
        path.chmod(_default_mode(self.is_directory))
        return path

    def _discard(self, path: Path) -> None:
        if self.is_directory and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        try:
            self._where.parent.mkdir(parents=True, exist_ok=True)
            self.path = self._create()
        except OSError as err:
            error = _write_error(err, self.target)
            if error is None:
                raise
            raise error from err
        return self.path

    def commit(self) -> Path:
        """Move the staged output into place (replacing an old ``target`` when allowed) and return ``target``.

        Raises:
            OutputExistsError: ``target`` appeared meanwhile and ``overwrite`` is false.
        """
        if self.path is None:
            raise RuntimeError("commit() outside the with block")
        check = check_output_dir if self.is_directory else check_output_file
        check(self.target, overwrite=self.overwrite)  # something may have appeared there since the start
        _fsync_tree(self.path)  # the contents are on disk before the name says they are complete
        old = None
        if self.is_directory and (self._where.exists() or self._where.is_symlink()):
            old = self._where.with_name(f".{self._where.name}.old-{secrets.token_hex(4)}")
            os.replace(self._where, old)
        try:
            os.replace(self.path, self._where)  # a file replaces an old file atomically
        except BaseException:
            if old is not None:
                os.replace(old, self._where)
            raise
        self.path = None
        _fsync(self._where.parent)  # the rename itself is on disk
        if old is not None:
            self._discard(old)
        return self.target

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.path is not None:
            path, self.path = self.path, None
            self._discard(path)
        if isinstance(exc, OSError):
            error = _write_error(exc, self.target)
            if error is not None:
                raise error from exc


class StagedDirectory(_Staged):
    """A hidden temporary directory next to ``target`` that becomes ``target`` on :meth:`commit`.

    Use as a context manager; the ``with`` value is the staged directory to fill. Leaving the block without
    ``commit()`` (an exception, a failed check, Ctrl-C) deletes it.

    Args:
        target: The final directory.
        overwrite: Replace an existing non-empty ``target`` on commit; otherwise it is refused up front.

    Raises:
        OutputPathError: ``target`` is a file, a parent is a file, or the parent is not writable.
        OutputExistsError: ``target`` exists, is not empty, and ``overwrite`` is false.
        OutputWriteError: The disk filled up (or the file system is read-only) while writing.
    """

    is_directory = True


class StagedFile(_Staged):
    """A hidden temporary file next to ``target`` that becomes ``target`` on :meth:`commit`.

    Use as a context manager; the ``with`` value is the (empty) staged file to write. Leaving the block without
    ``commit()`` deletes it; an old ``target`` is replaced atomically by the rename.

    Args:
        target: The final file.
        overwrite: Replace an existing non-empty ``target``; otherwise it is refused up front.

    Raises:
        OutputPathError: ``target`` is a directory, a parent is a file, or the parent is not writable.
        OutputExistsError: ``target`` exists, is not empty, and ``overwrite`` is false.
        OutputWriteError: The disk filled up (or the file system is read-only) while writing.
    """

    is_directory = False


__all__ = [
    "OutputExistsError",
    "OutputPathError",
    "OutputWriteError",
    "StagedDirectory",
    "StagedFile",
    "check_output_dir",
    "check_output_file",
]

"""Atomic publishing: a staged output is flushed to disk (files, then the renamed entry) before it counts as done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from elmtune import output_paths
from elmtune.output_paths import OutputExistsError, StagedDirectory, StagedFile


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """Every fsync, in order, as ("fsync", path), and every rename as ("rename", destination)."""
    events: list[tuple[str, Path]] = []
    descriptors: dict[int, Path] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def recording_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        descriptors[fd] = Path(path)
        return fd

    def recording_fsync(fd):
        events.append(("fsync", descriptors[fd]))
        real_fsync(fd)

    def recording_replace(source, destination):
        events.append(("rename", Path(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(output_paths.os, "open", recording_open)
    monkeypatch.setattr(output_paths.os, "fsync", recording_fsync)
    monkeypatch.setattr(output_paths.os, "replace", recording_replace)
    return events


def test_directory_files_are_flushed_before_the_rename_and_the_parent_after(tmp_path: Path, synced) -> None:
    target = tmp_path / "out"
    staging = StagedDirectory(target)
    with staging as staged:
        (staged / "a.bin").write_bytes(b"a" * 10)
        (staged / "sub").mkdir()
        (staged / "sub" / "b.json").write_text("{}")
        written = {staged / "a.bin", staged / "sub" / "b.json", staged, staged / "sub"}
        assert staging.commit() == target
    rename = synced.index(("rename", target))
    assert {path for kind, path in synced[:rename] if kind == "fsync"} == written  # every file and directory
    assert synced[rename + 1 :] == [("fsync", tmp_path)]  # then the parent, which holds the new name
    assert (target / "sub" / "b.json").read_text() == "{}"


def test_file_is_flushed_before_the_rename(tmp_path: Path, synced) -> None:
    target = tmp_path / "report.json"
    staging = StagedFile(target)
    with staging as staged:
        staged.write_text("x")
        staging.commit()
    assert synced == [("fsync", staged), ("rename", target), ("fsync", tmp_path)]
    assert target.read_text() == "x"


def test_nothing_is_published_without_commit(tmp_path: Path, synced) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), StagedDirectory(target) as staged:
        (staged / "a.bin").write_bytes(b"a")
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == [] and synced == []


def test_overwrite_replaces_only_once_the_new_output_is_complete(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError):
        StagedDirectory(target)
    staging = StagedDirectory(target, overwrite=True)
    with staging as staged:
        (staged / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # the old output stays until the commit
        staging.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["new.txt"]

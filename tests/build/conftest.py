"""Running ``elmtune build`` as the console script does (exit codes, one-line errors), from the repository root."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from elmtune.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliRun:
    """``elmtune ARGS`` through the console-script entry point; the recipes' data paths are relative to the root."""
    out, err = io.StringIO(), io.StringIO()
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = ["elmtune", *args]
    code = 0
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return CliRun(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def elmtune() -> Callable[..., CliRun]:
    """Run ``elmtune`` with these arguments; returns the exit code and what it printed."""
    return run_cli

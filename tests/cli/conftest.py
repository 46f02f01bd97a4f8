"""CLI fixtures: a tiny model config directory, and the console-script entry point run in-process."""

import sys
from collections.abc import Callable

import pytest

from elmtune.cli.app import main
from elmtune.models import OpenELMConfig


@pytest.fixture
def tiny_config_dir(tmp_path):
    OpenELMConfig.from_preset("tiny").save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[list[str]], tuple[int, str]]:
    """``run_main(argv)`` runs ``elmtune ARGV`` as the console script does and returns (exit code, its error line).

    It checks that exactly one ``error:`` line was printed, last, without a traceback, and that the error was an
    anticipated one (an ElmtuneError or a usage error, not the entry point's catch-all).
    """

    def run(argv: list[str]) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["elmtune", *argv])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
        assert "(unexpected; rerun with --debug" not in err, err
        return exit_info.value.code, errors[0]

    return run

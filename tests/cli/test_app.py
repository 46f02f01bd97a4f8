"""The CLI root and ``elmtune inspect``."""

import shutil
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from elmtune import __version__
from elmtune.cli.app import app

runner = CliRunner()


def _elmtune_command():
    exe = shutil.which("elmtune")
    return [exe] if exe else [sys.executable, "-m", "elmtune.cli"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"elmtune {__version__}"


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from elmtune.cli.app import app; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == "[]"
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run([*_elmtune_command(), "--help"], capture_output=True, text=True)
        timings.append(time.perf_counter() - start)
        assert result.returncode == 0 and "inspect" in result.stdout
    assert min(timings) < 2.0, timings


def test_inspect_270m_prints_every_layer_and_the_total():
    result = runner.invoke(app, ["inspect", "270M"])
    assert result.exit_code == 0, result.output
    assert "271,527,168" in result.output
    assert "1152x1280" in result.output and "10240x1280" in result.output and "20/5" in result.output
    assert "40,960,000" in result.output  # the tied embedding


def test_inspect_reads_a_checkpoint_directory(tmp_path, tiny_config_dir):
    result = runner.invoke(app, ["inspect", str(tiny_config_dir)])
    assert result.exit_code == 0 and "4,687,104" in result.output


def test_unknown_model_is_one_line_error_without_traceback():
    result = subprocess.run([*_elmtune_command(), "inspect", "no-such-model"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown model 'no-such-model'") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_command_drops_only_bitsandbytes_note_about_its_optional_kernels(monkeypatch):
    import logging

    from elmtune.cli import app as app_module

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setattr(sys, "argv", ["elmtune", "--version"])
    with pytest.raises(SystemExit):
        app_module.main()
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "no kernels")
        logger.warning("something else bitsandbytes says")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else bitsandbytes says"]

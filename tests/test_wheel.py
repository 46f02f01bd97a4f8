"""elmtune works from an installed wheel, not only from a clone: the wheel carries the recipes, the sample data and
the tokenizer, and a fresh environment runs ``elmtune quickstart --help`` and a recipe by name outside the
repository."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        out,
    )
    [built] = out.glob("elmtune-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory):
    """A new virtual environment with the wheel installed; the other dependencies come from this environment's
    site-packages through a path file (installing torch again would take minutes), which does not make this
    environment's editable elmtune importable there."""
    root = tmp_path_factory.mktemp("env")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], root)
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    )
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv, env


def test_the_wheel_carries_recipes_samples_and_tokenizer(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in (ROOT / "src" / "elmtune" / "recipes").glob("*.yaml"):
        assert f"elmtune/recipes/{recipe.name}" in names
    for sample in (ROOT / "src" / "elmtune" / "samples").rglob("*"):
        if sample.is_file():
            assert f"elmtune/{sample.relative_to(ROOT / 'src' / 'elmtune').as_posix()}" in names
    assert "elmtune/models/tokenizer_files/tokenizer.model" in names


def test_the_installed_wheel_runs_quickstart_help_and_a_recipe_by_name(fresh_env, tmp_path):
    venv, env = fresh_env
    where = _run([str(venv / "bin" / "python"), "-c", "import elmtune; print(elmtune.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's copy, not the checkout
    elmtune = str(venv / "bin" / "elmtune")
    help_text = _run([elmtune, "quickstart", "--help"], tmp_path, env).stdout
    assert "Usage: elmtune quickstart" in help_text and "elmtune quickstart --model" in help_text
    listed = _run([elmtune, "recipes"], tmp_path, env).stdout
    assert "tiny-lora-commonsense" in listed and "quickstart-tiny" in listed
    run = _run([elmtune, "train", "--config", "tiny-lora-commonsense", "-o", "run", "--max-steps", "2"], tmp_path, env)
    assert "step 2/2" in run.stderr + run.stdout
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert str(venv) in (tmp_path / "run" / "config.yaml").read_text(encoding="utf-8")  # data from the wheel

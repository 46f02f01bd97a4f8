"""``elmtune merge --config``: the file's settings under the flags given, errors naming the file, key or flag."""

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from elmtune.cli.app import app
from elmtune.cli.merge import MERGE_COMMAND_OPTIONS, MERGE_RENAMED
from elmtune.cli.options import config_keys
from elmtune.errors import ConfigError, ElmtuneError

runner = CliRunner()


class _Stop(ElmtuneError):
    """Raised by the fake merge once it has seen the options."""


@pytest.fixture
def seen(monkeypatch):
    calls = []

    def fake_merge_to_directory(base, adapter_dir, output, options):
        calls.append(options)
        raise _Stop("stop")

    monkeypatch.setattr("elmtune.merging.run.merge_to_directory", fake_merge_to_directory)
    return calls


def _merge(tmp_path, *args):
    return runner.invoke(app, ["merge", "tiny", str(tmp_path / "adapter"), "-o", str(tmp_path / "out"), *args])


def test_defaults_without_a_file_are_the_old_flag_defaults(seen, tmp_path):
    _merge(tmp_path)
    (options,) = seen
    assert (options.dtype, options.untie_embeddings, options.low_memory, options.verify) == (None, False, False, True)
    assert (options.max_shard_size, options.device, options.overwrite) == (5 * 10**9, "cpu", False)


def test_file_settings_and_flags_on_top(seen, tmp_path):
    settings = tmp_path / "merge.yaml"
    settings.write_text("dtype: bf16\nlow_memory: true\nmax_shard_size: 2GB\ndevice: cuda\nverify: false\n")
    _merge(tmp_path, "--config", str(settings), "--device", "cpu", "--dtype", "fp16")
    (options,) = seen
    assert (options.dtype, options.device) == ("fp16", "cpu")  # the flags win
    assert options.low_memory and options.max_shard_size == 2 * 10**9 and not options.verify  # from the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("low_mem: true\n", "{file}: unknown merge key(s) 'low_mem'; known: dtype, untie_embeddings, low_memory"),
        ("low_memory: maybe\n", "{file}: merge.low_memory must be true or false, got 'maybe' (flag --low-memory)"),
    ],
    ids=["unknown key", "wrong type"],
)
def test_file_errors_name_the_file_and_the_key(seen, tmp_path, text, message):
    settings = tmp_path / "merge.yaml"
    settings.write_text(text)
    result = _merge(tmp_path, "--config", str(settings))
    assert isinstance(result.exception, ConfigError) and not seen
    assert str(result.exception).startswith(message.format(file=settings))


def test_every_merge_flag_sets_a_merge_option():
    from elmtune.merging.options import MergeOptions

    command = typer.main.get_command(app).commands["merge"]
    names = [param.name for param in command.params]
    keys = config_keys(MergeOptions, names, MERGE_RENAMED, MERGE_COMMAND_OPTIONS)
    fields = {spec.name for spec in dataclasses.fields(MergeOptions)}
    without_flag = {"budget", "probe_texts"}  # programmatic: the check's budget and prompts
    assert set(keys.values()) == fields - without_flag

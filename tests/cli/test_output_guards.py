"""Output guards of ``eval``, ``export``, ``merge`` and ``merge-adapters``: never clobber, never leave partial files.

For every command: an existing non-empty target is refused (before any model is loaded) unless ``--overwrite``;
``--overwrite`` replaces it; a full disk partway through the write leaves the old target byte-identical and no
temporary file; a target of the wrong kind or in a read-only directory is one line, without a traceback. And
``merge`` refuses an adapter naming a module the model lacks, checked or not.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
from elmtune.cli.app import app
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "commonsense" / "llm_adapters"
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guards")


@pytest.fixture(scope="module")
def base(root: Path) -> Path:
    """The tiny preset, saved: a merge base and an exportable (tied) checkpoint."""
    torch.manual_seed(0)
    OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).save_pretrained(root / "base")
    return root / "base"


@pytest.fixture(scope="module")
def lora(base: Path, root: Path) -> Path:
    """LoRA r 2 on out_proj, with B moved off zero as after training."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(load_model(base), AdapterConfig(r=2, targets=("out_proj",)))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    return save_adapter(model, root / "lora", base_name=str(base))


@dataclass(frozen=True)
class Command:
    """One writing command: how to call it, what kind of target it writes and how to recognise a complete output."""

    name: str
    argv: Callable[[Path, Path, Path], list[str]]  # (base, adapter, target) -> arguments
    is_dir: bool
    complete: Callable[[Path], bool]
    heavy: tuple[str, str]  # (module, attribute) that does the first heavy work: loading a model or an adapter


COMMANDS = {
    "merge": Command(
        "merge",
        lambda base, adapter, out: ["merge", str(base), str(adapter), "-o", str(out), "--no-verify"],
        True,
        lambda out: (out / "model.safetensors").is_file() and (out / "merge_report.json").is_file(),
        ("elmtune.merging.run", "read_adapter"),
    ),
    "merge-adapters": Command(
        "merge-adapters",
        lambda base, adapter, out: ["merge-adapters", str(adapter), "--method", "cat", "-o", str(out)],
        True,
        lambda out: (out / "adapter_model.safetensors").is_file() and (out / "combine_report.json").is_file(),
        ("elmtune.merging.combine", "read_adapter"),
    ),
    "export": Command(
        "export",
        lambda base, adapter, out: ["export", str(base), "-o", str(out), "--outtype", "f32"],
        False,
        lambda out: out.read_bytes()[:4] == b"GGUF",
        ("elmtune.models.gguf", "read_export_config"),
    ),
    "eval": Command(
        "eval",
        lambda base, adapter, out: [
            *("eval", str(base), "--data", str(FIXTURES), "--tasks", "boolq", "--limit", "1"),
            *("--batch-size", "1", "--device", "cpu", "-o", str(out)),
        ],
        True,
        lambda out: "results" in json.loads((out / "results.json").read_text()),
        ("elmtune.evaluation.runner", "load_for_eval"),
    ),
}


def snapshot(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def previous_output(target: Path, is_dir: bool) -> dict[str, bytes]:
    """Put an earlier run's output at ``target`` and return its snapshot."""
    if is_dir:
        target.mkdir(parents=True)
        (target / "results.json").write_text('{"old": true}\n')
        (target / "examples").mkdir()
        (target / "examples" / "old.jsonl").write_text("{}\n")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"an older export")
    return snapshot(target)


def target_in(tmp_path: Path, command: Command) -> Path:
    return tmp_path / "out" / ("result" if command.is_dir else "model.gguf")


def forbid_heavy_work(monkeypatch: pytest.MonkeyPatch, command: Command) -> None:
    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{command.name} started loading before checking its output path")

    module, attribute = command.heavy
    monkeypatch.setattr(f"{module}.{attribute}", started)


def model_arg(command: Command, base: Path) -> Path | str:
    return "tiny" if command.name == "eval" else base  # eval scores the random-weight preset: no checkpoint needed


@pytest.mark.parametrize("name", list(COMMANDS))
def test_existing_target_is_refused_before_any_work(name, base, lora, tmp_path, monkeypatch, capsys, run_main):
    command = COMMANDS[name]
    target = target_in(tmp_path, command)
    before = previous_output(target, command.is_dir)
    forbid_heavy_work(monkeypatch, command)
    code, err = run_main(command.argv(model_arg(command, base), lora, target))
    assert code == 1 and str(target) in err and "pass --overwrite" in err, err
    assert snapshot(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_overwrite_replaces_the_target_whole(name, base, lora, tmp_path):
    command = COMMANDS[name]
    target = target_in(tmp_path, command)
    before = previous_output(target, command.is_dir)
    result = runner.invoke(app, [*command.argv(model_arg(command, base), lora, target), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert command.complete(target)
    after = snapshot(target)
    if command.is_dir:
        assert "examples/old.jsonl" not in after and after.get("results.json") != before["results.json"]
    else:
        assert after["."] != before["."]
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no staged or old copy left


class FullDisk:
    """A file object that accepts ``budget`` bytes in all, then writes what still fits and raises ENOSPC."""

    def __init__(self, handle, budget: list[int]) -> None:
        self._handle = handle
        self._budget = budget

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self._budget[0]:
            self._handle.write(memoryview(data).cast("B")[: self._budget[0]])
            self._budget[0] = 0
            raise ENOSPC
        self._budget[0] -= size
        return self._handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def fill_the_disk(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the lowest-level write of command ``name`` fail with ENOSPC partway through its output."""
    if name == "merge":  # the streaming safetensors writer: ``open`` in elmtune.merging.safetensors_writer
        from elmtune.merging import safetensors_writer

        budget = [200_000]  # the header and part of the first tensors
        monkeypatch.setattr(safetensors_writer, "open", lambda *a, **k: FullDisk(open(*a, **k), budget), raising=False)
    elif name == "merge-adapters":  # safetensors writes the whole file at once: half of it lands
        from safetensors.torch import save

        def half_written(tensors, filename, metadata=None):
            data = save(tensors, metadata=metadata)
            Path(filename).write_bytes(data[: len(data) // 2])
            raise ENOSPC

        monkeypatch.setattr("safetensors.torch.save_file", half_written)
    elif name == "export":  # gguf's writer: the third tensor's bytes only partly land
        import gguf

        real, calls = gguf.GGUFWriter.write_tensor_data, []

        def write_tensor_data(self, tensor, *args, **kwargs):
            calls.append(tensor.nbytes)
            if len(calls) == 3:
                self.fout[0].write(tensor.tobytes()[: tensor.nbytes // 2])
                raise ENOSPC
            return real(self, tensor, *args, **kwargs)

        monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", write_tensor_data)
    else:  # eval: results.json lands, results.md is cut short
        real_write_text = Path.write_text

        def write_text(self, data, *args, **kwargs):
            if self.name == "results.md":
                real_write_text(self, data[: len(data) // 2], *args, **kwargs)
                raise ENOSPC
            return real_write_text(self, data, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_full_disk_leaves_the_old_target_and_no_partial_files(
    name, base, lora, tmp_path, monkeypatch, capsys, run_main
):
    command = COMMANDS[name]
    target = target_in(tmp_path, command)
    before = previous_output(target, command.is_dir)
    fill_the_disk(monkeypatch, name)
    argv = [*command.argv(model_arg(command, base), lora, target), "--overwrite"]
    code, err = run_main(argv)
    assert code == 1 and "No space left on device" in err and str(target) in err, err
    assert snapshot(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_target_of_the_wrong_kind_is_one_line(name, base, lora, tmp_path, monkeypatch, capsys, run_main):
    command = COMMANDS[name]
    forbid_heavy_work(monkeypatch, command)
    wrong = tmp_path / "wrong"
    if command.is_dir:
        wrong.write_text("a file where a directory is expected")
    else:
        (wrong / "inside").mkdir(parents=True)
    before = snapshot(wrong)
    code, err = run_main(command.argv(model_arg(command, base), lora, wrong))
    assert code == 1 and str(wrong) in err
    assert ("is a file" if command.is_dir else "is a directory") in err, err
    assert snapshot(wrong) == before and sorted(p.name for p in tmp_path.iterdir()) == ["wrong"]

    file = tmp_path / "notes.txt"
    file.write_text("not a directory")
    code, err = run_main(command.argv(model_arg(command, base), lora, file / "out"))
    assert code == 1 and f"{file} is a file, not a directory" in err, err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_read_only_parent_is_one_line(name, base, lora, tmp_path, monkeypatch, capsys, run_main):
    command = COMMANDS[name]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        forbid_heavy_work(monkeypatch, command)
        target = target_in(locked, command)
        code, err = run_main(command.argv(model_arg(command, base), lora, target))
        assert code == 1 and f"directory {locked} is not writable" in err, err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("verify", [False, True])
def test_merge_refuses_an_adapter_module_the_model_lacks(verify, base, lora, tmp_path, monkeypatch, capsys, run_main):
    adapter = tmp_path / "foreign"
    shutil.copytree(lora, adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    module = "base_model.model.transformer.layers.9.attn.out_proj"  # the tiny model has 4 layers
    tensors[f"{module}.lora_A.weight"] = torch.ones(2, 128)
    tensors[f"{module}.lora_B.weight"] = torch.ones(128, 2)
    save_file(tensors, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "merged"
    argv = ["merge", str(base), str(adapter), "-o", str(out), *([] if verify else ["--no-verify"])]
    code, err = run_main(argv)
    assert code == 1 and "module transformer.layers.9.attn.out_proj" in err and str(adapter) in err, err
    assert "does not have" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]  # nothing written, not even a staged copy


def test_ctrl_c_midway_leaves_the_old_file_and_no_partial_file(base, tmp_path, monkeypatch):
    import gguf

    from elmtune.models.gguf import export_gguf

    target = tmp_path / "model.gguf"
    before = previous_output(target, is_dir=False)

    def interrupted(self, tensor, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(base, target, "f32", overwrite=True)
    assert snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_a_failed_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    from elmtune import output_paths

    target = tmp_path / "result"
    before = previous_output(target, is_dir=True)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the old directory is aside; moving the new one in fails
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(output_paths.os, "replace", replace)
    staged = output_paths.StagedDirectory(target, overwrite=True)
    with pytest.raises(OSError, match="cross-device"), staged as tmp:
        (tmp / "results.json").write_text("new\n")
        staged.commit()
    assert calls[0][0] == "result" and calls[1][1] == "result" and calls[2] == (calls[0][1], "result")
    assert snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["result"]

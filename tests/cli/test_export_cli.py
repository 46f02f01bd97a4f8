"""``elmtune export``: options reach the library, the file is written, user mistakes are one-line errors."""

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from elmtune.cli.app import app, main
from elmtune.models import OpenELMConfig, OpenELMForCausalLM
from elmtune.models import gguf as gguf_module
from elmtune.models.gguf_check import LlamaCppMissingError, llama_cpp_available

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny checkpoint whose every parameter, norms included, is random (so a swapped tensor changes logits)."""
    torch.manual_seed(0)
    model = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny"))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(1 + 0.3 * torch.randn_like(param) if param.ndim == 1 else 0.05 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("export") / "tiny"
    model.save_pretrained(path)
    return path


def test_export_writes_a_gguf_file(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny.Q8_0.gguf"
    result = runner.invoke(
        app, ["export", str(tiny_checkpoint), "--format", "gguf", "-o", str(out), "--outtype", "q8_0"]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"GGUF"
    assert f"wrote {out}" in result.output and "q8_0" in result.output and "21 Q8_0" in result.output
    assert "4,687,104 parameters" in result.output


@pytest.fixture
def library_calls(monkeypatch):
    """Replace the library call with a recorder that returns a plausible report."""
    calls = []

    def fake_export(model_dir, out_path, outtype, **kwargs):
        calls.append((model_dir, out_path, outtype, kwargs))
        return gguf_module.ExportReport(
            path=Path(out_path),
            outtype=outtype,
            tensor_types={"token_embd.weight": outtype.upper()},
            parameter_count=7,
            file_bytes=2**20,
            tokenizer=Path("tokenizer.model"),
            seconds=0.5,
        )

    monkeypatch.setattr(gguf_module, "export_gguf", fake_export)
    return calls


def test_options_reach_the_library(library_calls):
    result = runner.invoke(app, ["export", "ckpt", "-o", "m.gguf", "--outtype", "bf16", "--name", "My ELM"])
    assert result.exit_code == 0, result.output
    expected = {"name": "My ELM", "progress": True, "overwrite": False}  # progress: a bar or plain lines
    assert library_calls == [(Path("ckpt"), Path("m.gguf"), "bf16", expected)]
    assert "1 BF16" in result.output and "1.0 MiB" in result.output
    result = runner.invoke(app, ["export", "ckpt", "-o", "m.gguf", "--overwrite", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert library_calls[-1][3]["overwrite"] is True and library_calls[-1][3]["progress"] is False


def test_default_outtype_is_f16(library_calls):
    result = runner.invoke(app, ["export", "ckpt", "--output", "m.gguf"])
    assert result.exit_code == 0, result.output
    assert library_calls == [
        (Path("ckpt"), Path("m.gguf"), "f16", {"name": None, "progress": True, "overwrite": False})
    ]


def test_unknown_format_and_outtype_are_usage_errors(tiny_checkpoint, tmp_path):
    for args in (["--format", "onnx"], ["--outtype", "q4_k"]):
        result = runner.invoke(app, ["export", str(tiny_checkpoint), "-o", str(tmp_path / "x.gguf"), *args])
        assert result.exit_code == 2 and args[1] in result.output
    assert not (tmp_path / "x.gguf").exists()


def test_bad_directory_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    argv = ["elmtune", "export", str(tmp_path / "missing"), "--format", "gguf", "-o", str(tmp_path / "m.gguf")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()  # the console-script entry point
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a directory" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_other_architectures_are_refused_in_one_line(tmp_path, run_main):
    """export stays OpenELM-only: a Llama checkpoint (which merge and inspect accept) is refused, exit 1, no file."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    code, error = run_main(["export", str(tmp_path / "llama"), "--format", "gguf", "-o", str(tmp_path / "l.gguf")])
    assert code == 1
    assert error == f"error: {tmp_path / 'llama' / 'config.json'} has model_type 'llama'; only OpenELM can be exported"
    assert not (tmp_path / "l.gguf").exists()


@pytest.mark.skipif(llama_cpp_available(), reason="llama-cpp-python is installed")
def test_check_without_llama_cpp_says_what_to_install(tiny_checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "-o", str(out), "--check"])
    assert result.exit_code == 1 and isinstance(result.exception, LlamaCppMissingError)
    assert "pip install llama-cpp-python" in str(result.exception)
    assert not out.exists()  # it fails before exporting


@pytest.mark.skipif(not llama_cpp_available(), reason="needs llama-cpp-python")
@pytest.mark.parametrize(("outtype", "max_diff", "min_top1"), [("f32", 1e-4, 1.0), ("f16", 5e-2, 0.9)])
def test_check_runs_the_file_with_llama_cpp(tiny_checkpoint, tmp_path, outtype, max_diff, min_top1):
    from elmtune.models.gguf_check import check_gguf

    report = gguf_module.export_gguf(tiny_checkpoint, tmp_path / "m.gguf", outtype)
    result = check_gguf(report.path, tiny_checkpoint)
    assert result.tokenization_match
    assert result.max_abs_diff <= max_diff, result  # f32: llama.cpp's graph on our file computes our logits
    assert result.top1_agreement >= min_top1, result


@pytest.mark.skipif(not llama_cpp_available(), reason="needs llama-cpp-python")
def test_check_option_prints_the_comparison(tiny_checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "-o", str(out), "--outtype", "f32", "--check"])
    assert result.exit_code == 0, result.output
    assert "llama.cpp check over" in result.output and "top-1 agreement 100.0%" in result.output
    assert "tokenization identical" in result.output

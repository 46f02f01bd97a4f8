"""``elmtune merge`` and ``elmtune inspect`` on other causal LMs (Llama, OLMo, Phi-3, GPT-NeoX, OPT, GPT-2).

The merged directory equals peft's ``merge_and_unload``; inspect's counts equal those of a model built directly.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from elmtune.cli.app import app

runner = CliRunner()
CHECK_LINE = re.compile(r"merge check passed: max \|logit diff\| (\S+), mean KL (\S+), top-1 agreement (\S+)%")


def logits(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def peft_adapter(base: nn.Module, out: Path, *, dora: bool, targets: str | list[str] = "all-linear") -> Path:
    """A plain peft adapter on ``base`` with random non-zero B (and magnitudes), saved to ``out``."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=dora, lora_dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's Conv1D: peft switches fan_in_fan_out on
        model = get_peft_model(base, config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(str(out))
    return out


def peft_merged(base: nn.Module, adapter: Path) -> nn.Module:
    """peft's own merge of ``adapter`` into ``base``: the independent reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory, other_architecture, other_architectures) -> dict[str, Path]:
    """Each architecture (seed 0) saved with save_pretrained (fp32); the Llama base also carries a tokenizer."""
    root = tmp_path_factory.mktemp("bases")
    for arch in other_architectures:
        other_architecture(arch).save_pretrained(root / arch)
    from elmtune.models.tokenizer import load_tokenizer

    load_tokenizer().save_pretrained(root / "llama")
    return {arch: root / arch for arch in other_architectures}


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merge_equals_peft_merge_and_unload(
    bases: dict[str, Path], other_architecture, arch: str, method: str, tmp_path: Path
) -> None:
    adapter = peft_adapter(other_architecture(arch), tmp_path / "adapter", dora=method == "dora")
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(bases[arch]), str(adapter), "-o", str(out)])
    assert result.exit_code == 0, result.output
    numbers = CHECK_LINE.search(result.output)
    assert numbers is not None, result.output
    assert float(numbers.group(1)) <= 1e-4 and float(numbers.group(3)) == 100.0

    merged = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(merged).__name__ == type(other_architecture(arch)).__name__
    reference = peft_merged(other_architecture(arch), adapter)
    torch.testing.assert_close(logits(merged), logits(reference), atol=1e-5, rtol=0)
    assert (logits(merged) - logits(other_architecture(arch))).abs().max() > 1e-3  # the adapter did change the model

    report = json.loads((out / "merge_report.json").read_text())
    check = report["verification"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0
    assert check["positions"] > 0 and report["model_type"] == arch and report["adapter"]["method"] == method
    assert json.loads((out / "config.json").read_text())["model_type"] == arch
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() == (arch == "llama")


@pytest.mark.parametrize(("arch", "module"), [("gpt2", "wte"), ("opt", "lm_head")])
def test_adapter_on_a_tied_embedding_or_head_is_refused(bases, other_architecture, arch: str, module: str, tmp_path):
    adapter = peft_adapter(other_architecture(arch), tmp_path / "adapter", dora=False, targets=[module])
    result = runner.invoke(app, ["merge", str(bases[arch]), str(adapter), "-o", str(tmp_path / "merged")])
    assert result.exit_code != 0
    assert "ties its output head to the token embedding" in str(result.exception or result.output)
    assert not (tmp_path / "merged").exists()


def test_low_memory_is_refused_in_one_line(bases: dict[str, Path], other_architecture, tmp_path: Path) -> None:
    adapter = peft_adapter(other_architecture("llama"), tmp_path / "adapter", dora=False)
    result = runner.invoke(app, ["merge", str(bases["llama"]), str(adapter), "-o", str(tmp_path / "m"), "--low-memory"])
    assert result.exit_code != 0
    assert "--low-memory streams OpenELM bases only" in str(result.exception or result.output)


def table_rows(out: str, title: str) -> dict[str, list[str]]:
    """The rows of the first table printed after ``title``: first cell -> the other cells."""
    lines = out[out.index(title) :].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    rows = [line.split("│")[1:-1] for line in lines[:end] if line.startswith("│")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def number(cell: str) -> int:
    return int(cell.split()[0].replace(",", ""))


def test_inspect_counts_equal_the_built_model(bases, other_architecture, arch: str, tmp_path: Path) -> None:
    adapter = peft_adapter(other_architecture(arch), tmp_path / "adapter", dora=arch == "llama")
    result = runner.invoke(app, ["inspect", str(bases[arch]), "--adapter", str(adapter)], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    model = other_architecture(arch)
    layers = next(m for m in model.modules() if isinstance(m, nn.ModuleList))
    geometry = table_rows(result.output, f"({arch}, config.json)")
    for index, layer in enumerate(layers):
        assert number(geometry[str(index)][-1]) == sum(p.numel() for p in layer.parameters())
    assert number(geometry["total"][-1]) == sum(p.numel() for p in model.parameters())
    matrices = {
        "x".join(map(str, m.weight.shape)) for m in layers[0].modules() if getattr(m, "weight", None) is not None
    }
    assert set(geometry["0"][:-1]) == {shape for shape in matrices if "x" in shape}  # every 2-D weight's shape

    saved = load_file(adapter / "adapter_model.safetensors")  # the adapter's trainable tensors, as peft saved them
    trainable = table_rows(result.output, "adapter ")
    for index in range(len(layers)):
        in_layer = [t for k, t in saved.items() if re.search(rf"\.(h|layers)\.{index}\.", k)]
        assert number(trainable[str(index)][-1]) == sum(t.numel() for t in in_layer) > 0
    assert number(trainable["total"][-1]) == sum(t.numel() for t in saved.values())

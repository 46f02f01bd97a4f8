"""``elmtune merge`` and ``elmtune merge-adapters`` end to end on the tiny model: checked output, options, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from elmtune.adapters import load_adapter
from elmtune.cli.app import app
from elmtune.merging.verify import probe_batch
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
EMBEDDING = "transformer.token_embeddings.weight"
CHECK_LINE = re.compile(
    r"merge check passed: max \|logit diff\| (\S+), mean KL (\S+), top-1 agreement (\S+)% over (\d+) positions"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merge_cli")


@pytest.fixture(scope="module")
def base(root: Path) -> Path:
    """The tiny preset with out_proj and proj_2 zeroed: blocks start as the identity, so each position's top token
    stands out clearly (random weights otherwise give near-ties that any bf16 rounding flips)."""
    torch.manual_seed(0)
    model = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "out_proj" in name or "proj_2" in name:
                param.zero_()
    model.save_pretrained(root / "base")
    return root / "base"


@pytest.fixture(scope="module")
def lora(trained_adapter, base: Path, root: Path) -> Path:
    """LoRA r 4 on q and v (rows of qkv_proj), out_proj and proj_1: 3 fused tensors in each of 4 layers."""
    return trained_adapter(
        base, root / "lora", seed=1, scale=0.01, base_name=str(base), r=4, targets=("q", "v", "out_proj", "proj_1")
    )


@pytest.fixture(scope="module")
def merged(base: Path, lora: Path, root: Path) -> tuple[Path, str]:
    """The default merge (fp32, checked) and what the command printed."""
    result = runner.invoke(app, ["merge", str(base), str(lora), "-o", str(root / "merged")])
    assert result.exit_code == 0, result.output
    return root / "merged", result.output


def test_merge_output_equals_the_unmerged_adapter(logits_of, merged: tuple[Path, str], base: Path, lora: Path):
    out, output = merged
    report = json.loads((out / "merge_report.json").read_text())
    check = report["verification"]
    assert f"wrote {out} (float32, 12 tensors changed, head tied)" in output
    numbers = CHECK_LINE.search(output)
    assert numbers is not None, output
    assert numbers.group(1) == f"{check['max_abs_diff']:.3g}" and float(numbers.group(1)) <= 1e-4
    assert numbers.group(2) == f"{check['mean_kl']:.3g}" and numbers.group(3) == "100.00"
    assert int(numbers.group(4)) == int(probe_batch()[1].sum()) == check["positions"]  # every real probe token
    assert check["passed"] and check["budget"] == {"max_abs_diff": 1e-4}

    ids = torch.randint(3, 32000, (2, 12), generator=torch.Generator().manual_seed(4))
    expected = logits_of(load_adapter(load_model(base), lora), ids)  # peft's unmerged forward
    assert (expected - logits_of(load_model(base), ids)).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(logits_of(load_model(out), ids), expected, atol=1e-4, rtol=0)
    assert (out / "README.md").read_text().count(f"{check['max_abs_diff']:.3g}") >= 1


def test_bf16_output_rounds_the_fp32_merge_once(base: Path, lora: Path, tmp_path: Path):
    out = tmp_path / "bf16"
    result = runner.invoke(app, ["merge", str(base), str(lora), "-o", str(out), "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "(bfloat16, 12 tensors changed" in result.output and CHECK_LINE.search(result.output)
    report = json.loads((out / "merge_report.json").read_text())
    assert report["verification"]["budget"] == {"max_kl": 1e-3, "min_top1": 0.99}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    saved, original = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    factors = load_file(lora / "adapter_model.safetensors")
    settings = json.loads((lora / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    for i in range(4):
        prefix = f"base_model.model.transformer.layers.{i}.attn.out_proj"
        a, b = factors[f"{prefix}.lora_A.weight"].double(), factors[f"{prefix}.lora_B.weight"].double()
        key = f"transformer.layers.{i}.attn.out_proj.weight"
        exact = (original[key].double() + scale * b @ a).to(torch.bfloat16)  # W + s·B·A in fp64, rounded once
        assert (saved[key] != exact).float().mean() < 1e-3  # equal but for rare double-rounding ties
        norm = f"transformer.layers.{i}.ffn_norm.weight"
        assert torch.equal(saved[norm], original[norm].to(torch.bfloat16))  # untouched tensors: only cast


def test_untie_embeddings_keeps_the_base_head(logits_of, trained_adapter, base: Path, tmp_path: Path):
    adapter = trained_adapter(
        base,
        tmp_path / "embed",
        seed=1,
        scale=0.005,
        base_name=str(base),
        r=4,
        alpha=4,
        targets=("token_embeddings", "v"),
    )
    ids = torch.randint(3, 32000, (2, 12), generator=torch.Generator().manual_seed(6))
    expected = logits_of(load_adapter(load_model(base), adapter), ids)

    out = tmp_path / "untied"
    result = runner.invoke(app, ["merge", str(base), str(adapter), "-o", str(out), "--untie-embeddings"])
    assert result.exit_code == 0, result.output
    assert "head untied" in result.output and "note: the tied head" not in result.output
    assert json.loads((out / "config.json").read_text())["share_input_output_layers"] is False
    saved, original = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    assert torch.equal(saved["lm_head.weight"], original[EMBEDDING])  # the head the unmerged adapter uses
    assert not torch.equal(saved[EMBEDDING], original[EMBEDDING])  # the input embedding carries the adapter
    torch.testing.assert_close(logits_of(load_model(out), ids), expected, atol=1e-4, rtol=0)

    tied = runner.invoke(app, ["merge", str(base), str(adapter), "-o", str(tmp_path / "tied"), "--no-verify"])
    assert tied.exit_code == 0, tied.output
    assert "head tied" in tied.output and "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")


def test_low_memory_merge_is_bit_identical(merged: tuple[Path, str], base: Path, lora: Path, tmp_path: Path):
    out = tmp_path / "low"
    result = runner.invoke(app, ["merge", str(base), str(lora), "-o", str(out), "--low-memory"])
    assert result.exit_code == 0, result.output
    assert CHECK_LINE.search(result.output)
    assert (out / "model.safetensors").read_bytes() == (merged[0] / "model.safetensors").read_bytes()
    report = json.loads((out / "merge_report.json").read_text())
    assert report["low_memory"] is True and report["verification"]["passed"]


def test_no_verify_skips_the_check_and_says_so(base: Path, lora: Path, tmp_path: Path):
    out = tmp_path / "unchecked"
    result = runner.invoke(app, ["merge", str(base), str(lora), "-o", str(out), "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "merge check skipped (--no-verify)" in result.output and not CHECK_LINE.search(result.output)
    assert json.loads((out / "merge_report.json").read_text())["verification"] is None
    assert "**not** checked" in (out / "README.md").read_text()


def test_existing_output_is_a_one_line_error(base: Path, lora: Path, tmp_path: Path, monkeypatch, capsys, run_main):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_main(["merge", str(base), str(lora), "-o", str(out), "--no-verify"])
    assert code == 1 and "exists and is not empty; pass --overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    result = runner.invoke(app, ["merge", str(base), str(lora), "-o", str(out), "--no-verify", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_failed_check_exits_non_zero_and_leaves_nothing(
    base: Path, lora: Path, tmp_path: Path, monkeypatch, capsys, run_main
):
    from elmtune.merging import merge

    real = merge.target_delta

    def off_by_one_percent(*args, **kwargs):  # a merge bug: every update scaled by 1.01
        return 1.01 * real(*args, **kwargs)

    monkeypatch.setattr(merge, "target_delta", off_by_one_percent)
    out = tmp_path / "runs" / "merged"
    for extra in ([], ["--low-memory"]):
        code, err = run_main(["merge", str(base), str(lora), "-o", str(out), *extra])
        assert code == 1 and err.startswith("error: merge check failed")
        assert re.search(r"max \|logit diff\| \S+ > 0.0001", err) and "Nothing was written" in err
        assert not out.exists() and list(out.parent.iterdir()) == []  # no partial directory either


def test_merge_adapters_cat_is_the_weighted_sum(trained_adapter, base: Path, lora: Path, tmp_path: Path):
    other = trained_adapter(
        base, tmp_path / "other", seed=2, scale=0.01, base_name=str(base), r=4, targets=("q", "v", "out_proj", "proj_1")
    )
    out = tmp_path / "combined"
    args = ["merge-adapters", str(lora), str(other), "--weights", "0.7,0.3", "--method", "cat", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cat of 2 adapters, 16 modules, rank 8" in result.output
    deviation = re.search(r"deviation from the exact weighted sum: max (\S+),", result.output)
    assert deviation is not None and float(deviation.group(1)) < 1e-6  # exact but for fp32 rounding

    def update(path: Path, module: str) -> torch.Tensor:
        tensors = load_file(path / "adapter_model.safetensors")
        settings = json.loads((path / "adapter_config.json").read_text())
        rank = settings.get("rank_pattern", {}).get(module.replace(".", "\\."), settings["r"])
        alpha = settings.get("alpha_pattern", {}).get(module.replace(".", "\\."), settings["lora_alpha"])
        a = tensors[f"base_model.model.{module}.lora_A.weight"].double()
        b = tensors[f"base_model.model.{module}.lora_B.weight"].double()
        return alpha / rank * b @ a  # s·B·A

    for module in ("transformer.layers.0.attn.qkv_proj.q", "transformer.layers.3.ffn.proj_1"):
        expected = 0.7 * update(lora, module) + 0.3 * update(other, module)
        torch.testing.assert_close(update(out, module), expected, atol=1e-6, rtol=1e-6)
    report = json.loads((out / "combine_report.json").read_text())
    assert report["weights"] == [0.7, 0.3] and report["exact_weighted_sum"]


def test_merge_adapters_refuses_dora(
    trained_adapter, base: Path, lora: Path, tmp_path: Path, monkeypatch, capsys, run_main
):
    dora = trained_adapter(
        base,
        tmp_path / "dora",
        seed=1,
        scale=0.01,
        base_name=str(base),
        method="dora",
        r=4,
        targets=("q", "v", "out_proj", "proj_1"),
    )
    out = tmp_path / "combined"
    argv = ["merge-adapters", str(lora), str(dora), "--weights", "0.5,0.5", "-o", str(out)]
    code, err = run_main(argv)
    assert code == 1 and f"{dora} is a DoRA adapter" in err and "cannot be combined" in err and "elmtune merge" in err
    assert not out.exists()

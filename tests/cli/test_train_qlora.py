"""``elmtune train --base-dtype nf4``: a QLoRA run on a tiny model, and the one-line refusal without bitsandbytes."""

from __future__ import annotations

import json
import sys

import pytest

SAMPLE = "src/elmtune/samples/commonsense_train_sample200.json"


def _args(tmp_path, *extra: str, model: str = "tiny") -> list[str]:
    return [
        "train", "--model", model, "--data", SAMPLE, "--max-steps", "2", "--batch-size", "2", "--device", "cpu",
        "--targets", "q,v", "--output-dir", str(tmp_path / "run"), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_train_on_a_nf4_base_writes_an_adapter_that_records_it(tmp_path, monkeypatch, quantizable_tiny_dir):
    pytest.importorskip("bitsandbytes")
    from elmtune.cli.app import main

    argv = _args(tmp_path, "--base-dtype", "nf4", model=str(quantizable_tiny_dir))
    monkeypatch.setattr(sys, "argv", ["elmtune", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    metadata = json.loads((tmp_path / "run" / "final" / "elmtune_adapter.json").read_text())
    assert metadata["base_quantization"]["kind"] == "nf4"


def test_train_without_bitsandbytes_is_one_line_naming_the_flag(tmp_path, monkeypatch, run_main):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    code, error = run_main(_args(tmp_path, "--base-dtype", "nf4"))
    assert code == 2 and "base_dtype" in error and "pip install 'elmtune[qlora]'" in error
    assert not (tmp_path / "run" / "final").exists()

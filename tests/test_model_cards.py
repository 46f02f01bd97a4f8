"""The model card of a run's ``final/`` adapter: metadata and summary that match the run's own files, still loadable
by peft and mergeable by ``elmtune merge``; and the metadata helpers shared with the merged-model card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from elmtune.adapters import AdapterConfig
from elmtune.cli.app import app
from elmtune.datasets import DataConfig
from elmtune.finetune.adapter_card import card_metadata
from elmtune.finetune.config import RunConfig, TrainConfig
from elmtune.finetune.run import run_training
from elmtune.model_cards import front_matter, read_front_matter

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(__file__).resolve().parent / "fixtures" / "data"
PAIRS = {"path": str(DATA / "ultrafeedback_binarized_sample.jsonl"), "max_length": 96, "max_prompt_length": 48}


def _config(out: Path, data: dict, **train: object) -> RunConfig:
    settings = {"output_dir": str(out), "batch_size": 4, "max_steps": 3, "lr": 1e-2, "warmup": 0, "device": "cpu"}
    return RunConfig(
        model="tiny",
        data=DataConfig(**data),
        adapter=AdapterConfig(r=4, alpha=8, dropout=0.0),
        train=TrainConfig(**{**settings, **train}),
    )


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step SFT run on the commonsense sample with a held-out set."""
    out = tmp_path_factory.mktemp("cards") / "sft"
    data = {
        "path": str(DATA / "commonsense_train_sample200.json"),
        "max_length": 64,
        "limit": 40,
        "validation_size": 8,
        "train_on_prompt": True,
    }
    run_training(_config(out, data))
    return out


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step DPO run on UltraFeedback pairs with a held-out set."""
    out = tmp_path_factory.mktemp("cards") / "dpo"
    data = {**PAIRS, "limit": 16, "skip_invalid": True, "validation_size": 4}
    run_training(_config(out, data, objective="dpo", beta=0.5, max_steps=2))
    return out


def _split_card(path: Path) -> tuple[dict, str]:
    """The card's YAML metadata (parsed with yaml.safe_load) and its body."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _last(rows: list[dict], key: str) -> float:
    return [row[key] for row in rows if key in row][-1]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sft_card_metadata_and_summary_match_the_adapter_and_the_metrics(sft_run: Path) -> None:
    final = sft_run / "final"
    meta, body = _split_card(final / "README.md")
    peft_config = json.loads((final / "adapter_config.json").read_text())
    assert meta == {
        "base_model": peft_config["base_model_name_or_path"],
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["elmtune", "lora", "openelm", "sft"],
    }
    assert meta["base_model"] == "tiny"
    assert f"- r: {peft_config['r']}\n" in body
    assert f"- alpha: {peft_config['lora_alpha']}\n" in body
    # trainable parameters of a plain LoRA adapter = the tensors peft saved
    saved = sum(t.numel() for t in load_file(str(final / "adapter_model.safetensors")).values())
    assert f"- trainable parameters: {saved:,}\n" in body
    rows = _metrics(sft_run)
    assert f"- steps: {_last(rows, 'step')}\n" in body
    assert f"- final train loss: {_last(rows, 'loss'):.4f}\n" in body
    assert f"- final validation loss: {_last(rows, 'eval_loss'):.4f}\n" in body
    assert "reward" not in body
    assert f"- path: {DATA / 'commonsense_train_sample200.json'}\n" in body
    assert "- rows used (limit): 40\n- held out: 8\n" in body
    made = body.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(made) == yaml.safe_load((sft_run / "config.yaml").read_text())


def test_dpo_card_reports_the_reward_metrics(dpo_run: Path) -> None:
    meta, body = _split_card(dpo_run / "final" / "README.md")
    assert meta["tags"] == ["elmtune", "lora", "openelm", "dpo"]
    rows = _metrics(dpo_run)
    assert f"- final reward accuracy: {_last(rows, 'eval_rewards/accuracies'):.4f}\n" in body
    assert f"- final reward margin: {_last(rows, 'eval_rewards/margins'):.4f}\n" in body
    assert re.search(r"- objective: dpo \(preference_loss sigmoid, beta 0\.5, label_smoothing 0\.0, ", body)


def test_peft_loads_the_final_directory_with_its_card(sft_run: Path) -> None:
    from peft import PeftModel

    from elmtune.models import load_model

    final = sft_run / "final"
    model = PeftModel.from_pretrained(load_model("tiny"), str(final))
    saved = load_file(str(final / "adapter_model.safetensors"))
    loaded = dict(model.named_parameters())
    for key, tensor in saved.items():
        name = key.replace(".weight", ".default.weight")
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)


def test_merge_of_the_final_directory_writes_its_own_card(sft_run: Path, tmp_path: Path) -> None:
    final = sft_run / "final"
    adapter_card = (final / "README.md").read_text()
    result = CliRunner().invoke(app, ["merge", "tiny", str(final), "-o", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged_meta, _ = _split_card(tmp_path / "merged" / "README.md")
    assert merged_meta["library_name"] == "transformers" and merged_meta["base_model"] == "tiny"
    assert (final / "README.md").read_text() == adapter_card


def test_hub_datasets_appear_in_the_metadata_and_local_files_do_not() -> None:
    def metadata(path: str, method: str = "lora") -> dict:
        from elmtune.finetune.adapter_card import AdapterCardFacts, FinalMetrics

        config = {"model": "meta-llama/Llama-3.2-1B", "adapter": {"method": method}, "data": {"path": path}}
        return card_metadata(AdapterCardFacts("run", config, 10, FinalMetrics(*[None] * 6)))

    hub = metadata("HuggingFaceH4/ultrafeedback_binarized", method="dora")
    assert hub["datasets"] == ["HuggingFaceH4/ultrafeedback_binarized"]
    assert hub["tags"] == ["elmtune", "dora", "sft"]
    assert "datasets" not in metadata(str(DATA / "commonsense_train_sample200.json"))
    assert "datasets" not in metadata("data/train.jsonl")


def test_front_matter_round_trips_through_yaml() -> None:
    fields = {"base_model": "apple/OpenELM-270M", "tags": ["elmtune", "lora"], "datasets": ["a/b"]}
    text = front_matter(fields) + "\n\n# title\n"
    assert yaml.safe_load(text.split("---\n")[1]) == fields
    assert read_front_matter(text) == fields
    assert read_front_matter("# no metadata\n") is None
    assert read_front_matter("---\n[1, 2]\n---\n") is None

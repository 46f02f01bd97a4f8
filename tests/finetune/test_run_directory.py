"""What a finished training run leaves for its users: the tokenizer with OpenELM-Instruct's chat template beside every
adapter (``final/`` and each checkpoint's ``adapter/``), the post-tokenisation data counts on the adapter card, and a
report that a resume of the finished run writes again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from elmtune.finetune.checkpoint_integrity import checkpoint_problem
from elmtune.finetune.config import RunConfig
from elmtune.finetune.run import run_training
from elmtune.models.tokenizer import bundled_tokenizer_dir

pytestmark = pytest.mark.usefixtures("one_thread")
COMMONSENSE = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "commonsense_train_sample200.json"
EVAL_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "commonsense" / "llm_adapters"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# OpenELM-Instruct's format (Zephyr-style; docs/openelm-spec.md section 6), written out by hand
ONE_TURN = "<|user|>\nhi</s>\n<|assistant|>\n"
CONVERSATION = "<|system|>\nBe brief.</s>\n<|user|>\nhi</s>\n<|assistant|>\nhello</s>\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    """A 3-step SFT run with checkpoints at steps 2 and 3 and a held-out set: (its config, its directory)."""
    from elmtune.adapters import AdapterConfig
    from elmtune.datasets import DataConfig
    from elmtune.finetune.config import TrainConfig

    out = tmp_path_factory.mktemp("run_directory") / "run"
    config = RunConfig(
        model="tiny",
        data=DataConfig(path=str(COMMONSENSE), max_length=80, limit=40, validation_size=6, train_on_prompt=True),
        adapter=AdapterConfig(r=4, alpha=8, dropout=0.0),
        train=TrainConfig(
            output_dir=str(out), batch_size=4, max_steps=3, lr=1e-2, warmup=0, save_every=2, keep_last=5, device="cpu"
        ),
    )
    run_training(config)
    return config, out


def _adapter_dirs(run_dir: Path) -> list[Path]:
    return [run_dir / "final", *sorted((run_dir / "checkpoints").glob("step-*/adapter"))]


def test_final_and_every_checkpoint_carry_the_tokenizer_with_the_chat_template(finished) -> None:
    from transformers import AutoTokenizer

    _, run_dir = finished
    dirs = _adapter_dirs(run_dir)
    assert [d.parent.name for d in dirs[1:]] == ["step-00000002", "step-00000003"]
    reference = Tokenizer.from_file(str(bundled_tokenizer_dir() / "tokenizer.json"))
    text = "Question: which is heavier, 1 kg of iron or 1 kg of feathers? Answer: neither"
    for directory in dirs:
        saved = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert "<|assistant|>" in saved["chat_template"], directory  # in tokenizer_config.json itself
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        assert tokenizer.chat_template
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        assert rendered == ONE_TURN
        conversation = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
        assert tokenizer.apply_chat_template(conversation, tokenize=False) == CONVERSATION
        assert tokenizer(text)["input_ids"] == reference.encode(text).ids  # the run's tokenizer: BOS + Llama-2 pieces


def test_the_checkpoint_manifest_covers_the_tokenizer_files_but_resume_does_not_need_them(finished, tmp_path) -> None:
    _, run_dir = finished
    checkpoint = tmp_path / "step-00000002"
    shutil.copytree(run_dir / "checkpoints" / "step-00000002", checkpoint)
    manifest = json.loads((checkpoint / "manifest.json").read_text())["files"]
    for name in TOKENIZER_FILES:
        data = (checkpoint / "adapter" / name).read_bytes()
        assert manifest[f"adapter/{name}"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert checkpoint_problem(checkpoint) is None
    config_file = checkpoint / "adapter" / "tokenizer_config.json"
    original = config_file.read_bytes()
    config_file.write_bytes(original.replace(b"assistant", b"ASSISTANT"))  # same size, other content
    assert (
        checkpoint_problem(checkpoint)
        == "adapter/tokenizer_config.json does not match the sha256 recorded when it was written"
    )
    config_file.write_bytes(original)
    for name in TOKENIZER_FILES:  # a checkpoint of an earlier version: no tokenizer, no manifest entries for it
        (checkpoint / "adapter" / name).unlink()
        del manifest[f"adapter/{name}"]
    (checkpoint / "manifest.json").write_text(json.dumps({"files": manifest}))
    assert checkpoint_problem(checkpoint) is None


def _card_counts(card: str) -> dict[str, str]:
    section = card.split("### After tokenisation\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^- (.+?): (.+)$", section, flags=re.MULTILINE))


def test_the_card_shows_the_data_counts_the_run_recorded(finished) -> None:
    config, run_dir = finished
    recorded = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    counts = _card_counts((run_dir / "final" / "README.md").read_text(encoding="utf-8"))
    assert counts == {
        "rows read": str(recorded["rows"]),
        "rows skipped": f"{recorded['invalid']} invalid",
        "examples kept after tokenisation": f"{recorded['kept']} of {recorded['examples']}",
        "examples truncated to max length": str(recorded["truncated"]),
        "examples dropped": f"{recorded['dropped_overlong']} too long, {recorded['dropped_no_target']} with no "
        "target token left",
        "tokens": f"{recorded['tokens']} ({recorded['target_tokens']} trained targets)",
        "longest before truncation": f"{recorded['longest']} tokens",
        "training examples": str(recorded["training_items"]),
        "held-out examples": str(recorded["held_out"]),
    }
    # what the record must say for these settings: 40 rows, 6 held out, none dropped, some (not all) truncated at 80
    assert recorded["rows"] == recorded["examples"] == recorded["kept"] == config.data.limit == 40
    assert (recorded["training_items"], recorded["held_out"]) == (34, 6)
    assert 0 < recorded["truncated"] < 40 and recorded["longest"] > config.data.max_length
    assert recorded["tokens"] <= 40 * config.data.max_length
    assert (
        recorded["tokens"] - recorded["target_tokens"] == 40
    )  # train_on_prompt: every token but the first is a target


def test_resuming_a_finished_run_writes_its_report(finished, tmp_path) -> None:
    config, run_dir = finished
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("report.md", "report.html"):
        (copy / name).unlink()
    final_before = {p.name: p.read_bytes() for p in (copy / "final").iterdir()}
    resumed = dataclasses.replace(config, train=dataclasses.replace(config.train, output_dir=str(copy)))
    result = run_training(resumed, resume=True)
    assert result.already_finished
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    summary = dict(re.findall(r"^\| (.+?) \| (.+?) \|$", (copy / "report.md").read_text(), flags=re.MULTILINE))
    assert summary["steps"] == "3" == str(max(row["step"] for row in rows))
    assert float(summary["final train loss"]) == [row["loss"] for row in rows if "loss" in row][-1]
    assert float(summary["final validation loss"]) == [row["eval_loss"] for row in rows if "eval_loss" in row][-1]
    assert "<h1>Training run run</h1>" in (copy / "report.html").read_text()
    assert {p.name: p.read_bytes() for p in (copy / "final").iterdir()} == final_before


@pytest.mark.slow
def test_generate_and_eval_read_only_the_adapter_files_of_final(finished, tmp_path) -> None:
    from typer.testing import CliRunner

    from elmtune.cli.app import app

    _, run_dir = finished
    bare = tmp_path / "bare"  # the adapter files only, as a directory of an earlier version holds them
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "elmtune_adapter.json"):
        shutil.copyfile(run_dir / "final" / name, bare / name)
    runner = CliRunner()
    replies, results = [], []
    for adapter in (run_dir / "final", bare):
        args = ["generate", "tiny", "--adapter", str(adapter), "-p", "hi", "--max-new-tokens", "6", "--device", "cpu"]
        reply = runner.invoke(app, args)
        assert reply.exit_code == 0, reply.output
        replies.append(reply.stdout)
        out = tmp_path / f"eval-{adapter.name}"
        evaluated = runner.invoke(
            app,
            ["eval", "tiny", "--adapter", str(adapter), "--data", str(EVAL_DATA), "--tasks", "boolq", "--limit", "2"]
            + ["--device", "cpu", "--output", str(out)],
        )
        assert evaluated.exit_code == 0, evaluated.output
        results.append((out / "examples" / "boolq.jsonl").read_text())  # per question: log-likelihoods and picks
    assert replies[0] == replies[1] and results[0] == results[1]

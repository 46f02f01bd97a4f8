"""``elmtune plan``: train's flags, the table, ``--json``, and one-line errors."""

import inspect
import json

import pytest
from typer.testing import CliRunner

from elmtune.cli.app import app
from elmtune.cli.plan import NOT_PLANNED, plan
from elmtune.cli.train import train
from elmtune.datasets.config import DataConfig
from elmtune.finetune.config import RunConfig, TrainConfig
from elmtune.finetune.memory_counts import count_parameters
from elmtune.finetune.memory_plan import DeviceBudget, plan_memory

runner = CliRunner()


def test_plan_takes_every_train_flag_that_changes_memory():
    train_params = set(inspect.signature(train).parameters) - NOT_PLANNED
    plan_params = set(inspect.signature(plan).parameters)
    assert train_params <= plan_params
    assert plan_params - train_params == {"recipe", "device", "json_output"}


def test_json_equals_the_library_plan():
    argv = ["plan", "-m", "tiny", "--batch-size", "2", "--max-length", "64", "--objective", "dpo"]
    result = runner.invoke(app, [*argv, "--device", "cuda:8GB", "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    config = RunConfig(
        model="tiny",
        data=DataConfig(path="unused", max_length=64),
        train=TrainConfig(batch_size=2, objective="dpo"),
    )
    expected = plan_memory(config, DeviceBudget("cuda", 8 * 10**9), count_parameters(config))
    assert values["total"] == expected.total and values["fits"] is True
    assert values["tokens_per_step"] == 2 * 2 * 64
    assert (values["precision"], values["base_dtype"]) == ("bf16", "bf16")  # auto on a GPU


def test_table_and_advice_when_it_does_not_fit(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["plan", "-m", "tiny", "--max-length", "512", "--device", "cpu:0.5GB"])
    assert result.exit_code == 0, result.output
    for word in ("weights", "adapter", "optimizer", "activations", "logits", "allocator", "runtime", "total"):
        assert word in result.output
    assert "does NOT fit in cpu:0.5GB" in result.output
    assert "--gradient-checkpointing" in result.output and "--batch-size 2 --grad-accum 4" in result.output


def test_a_recipe_as_the_argument(monkeypatch, tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text("model: tiny\ndata: {path: data.jsonl, max_length: 128}\ntrain: {batch_size: 3}\n")
    result = runner.invoke(app, ["plan", str(recipe), "--grad-accum", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tokens_per_step"] == 3 * 128 * 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "-m", "tiny", "--device", "gpu:8GB"], "--device 'gpu:8GB': use cuda:24GB"),
        (["plan", "-m", "tiny", "--device", "cuda"], "--device 'cuda'"),
        (["plan", "-m", "tiny", "--batch-size", "0"], "(flag --batch-size)"),
        (["plan", "a.yaml", "--config", "b.yaml"], "not both"),
    ],
)
def test_user_mistakes_are_one_line_errors(run_main, argv, message):
    code, line = run_main(argv)
    assert code == 2 and message in line


def test_a_gpu_table_leaves_out_the_cpu_heap_row(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["plan", "-m", "tiny", "--device", "cuda:8GB"])
    assert result.exit_code == 0, result.output
    assert "activations" in result.output and "allocator" not in result.output

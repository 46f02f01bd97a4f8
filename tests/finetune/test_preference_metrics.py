"""TRL's metric names in the progress line and in validation rows (``eval_`` prefix), with TRL's values."""

import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from elmtune.datasets import prepare_data
from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import read_metrics
from elmtune.models import load_model, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TRL_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _logps(model, batch, side):
    """(B,) summed target log-probabilities of one side of the pairs, via cross-entropy."""
    ids, mask, labels = (batch[f"{side}_{key}"] for key in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, L, V)
    return -F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none").sum(-1)


def test_validation_rows_and_progress_lines_carry_trl_names_and_values(make_dpo_config, capsys):
    beta = 0.5
    config = make_dpo_config("val", data={"validation_size": 4}, beta=beta, max_steps=2, eval_every=1)
    result = run_training(config)
    output = capsys.readouterr().err
    progress = [line for line in output.splitlines() if line.startswith("step 2/2")]
    assert progress and "rewards/accuracies" in progress[0] and "rewards/margins" in progress[0]
    assert "step 2: validation loss" in output and "rewards/accuracies" in output.split("step 2: validation")[1]
    evals = [r for r in read_metrics(result.metrics_path) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert set(evals[-1]) == {"step", "eval_loss", *(f"eval_{name}" for name in TRL_METRICS)}
    # the last validation used the final adapter: recompute TRL's quantities independently on a fresh base
    data = prepare_data(config.data, load_tokenizer())
    batch = data.collate(list(data.validation))
    base = load_model("tiny").eval()
    policy = PeftModel.from_pretrained(load_model("tiny"), str(result.final_adapter)).eval()
    chosen = beta * (_logps(policy, batch, "chosen") - _logps(base, batch, "chosen"))  # (B,)
    rejected = beta * (_logps(policy, batch, "rejected") - _logps(base, batch, "rejected"))
    expected = {
        "eval_loss": (-F.logsigmoid(chosen - rejected)).mean().item(),
        "eval_rewards/chosen": chosen.mean().item(),
        "eval_rewards/rejected": rejected.mean().item(),
        "eval_rewards/accuracies": (chosen > rejected).float().mean().item(),
        "eval_rewards/margins": (chosen - rejected).mean().item(),
        "eval_logps/chosen": _logps(policy, batch, "chosen").mean().item(),
        "eval_logps/rejected": _logps(policy, batch, "rejected").mean().item(),
    }
    for key, value in expected.items():
        assert evals[-1][key] == pytest.approx(value, abs=1e-4), key
    assert not math.isclose(evals[-1]["eval_loss"], math.log(2), abs_tol=1e-4)  # it trained
    assert result.loss_curve is not None and result.loss_curve.stat().st_size > 0

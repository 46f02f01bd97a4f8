"""Preference optimisation (DPO / hinge / IPO) on the same training loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from elmtune.adapters import AdapterConfig, apply_adapter
from elmtune.datasets import DataConfig, prepare_data
from elmtune.finetune.objectives import PreferenceObjective, preference_loss, sequence_logps
from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import read_metrics
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_tokenizer

PAIRS = "ultrafeedback_binarized_sample.jsonl"


def test_losses_match_their_formulas():
    rc, rr = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.5, 0.5])
    nc, nr = torch.tensor([4, 2, 5]), torch.tensor([2, 3, 5])
    beta = 0.3
    delta = [1.0, -1.5, 0.0]
    expected_sigmoid = [math.log1p(math.exp(-beta * d)) for d in delta]
    expected_hinge = [max(0.0, 1 - beta * d) for d in delta]
    expected_ipo = [
        (2 / 4 - 1 / 2 - 1 / (2 * beta)) ** 2,
        (-1 / 2 - 0.5 / 3 - 1 / (2 * beta)) ** 2,
        (0.1 - 0.1 - 1 / (2 * beta)) ** 2,
    ]
    assert preference_loss(rc, rr, "sigmoid", beta).tolist() == pytest.approx(expected_sigmoid)
    assert preference_loss(rc, rr, "hinge", beta).tolist() == pytest.approx(expected_hinge)
    assert preference_loss(rc, rr, "ipo", beta, nc, nr).tolist() == pytest.approx(expected_ipo)


def test_sequence_logps_sum_target_token_log_probs():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 3, 1, -100, -100], [-100, -100, 6, 0, 2]])
    logps, counts = sequence_logps(logits, labels)
    expected = []
    for row in range(2):
        total = 0.0
        for t in range(1, 5):
            if labels[row, t] != -100:
                total += F.log_softmax(logits[row, t - 1], -1)[labels[row, t]].item()
        expected.append(total)
    assert logps.tolist() == pytest.approx(expected, abs=1e-5) and counts.tolist() == [2, 3]


@pytest.mark.parametrize(("loss_type", "expected"), [("sigmoid", math.log(2)), ("hinge", 1.0), ("ipo", 25.0)])
def test_policy_equals_reference_at_initialisation(loss_type, expected):
    # B = 0 at initialisation, so the policy is the base model: every log-ratio is zero. A reference computed from
    # anything other than the adapter-free model would break this.
    torch.manual_seed(0)
    model = apply_adapter(OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")), AdapterConfig(r=4, dropout=0.0))
    from pathlib import Path

    data = prepare_data(
        DataConfig(
            path=str(Path(__file__).resolve().parents[1] / "fixtures" / "data" / PAIRS),
            max_length=96,
            max_prompt_length=48,
            limit=3,
            skip_invalid=True,
        ),
        load_tokenizer(),
    )
    batch = data.collate([data.train[i] for i in range(3)])
    out = PreferenceObjective(loss_type=loss_type, beta=0.1)(model.eval(), batch)
    assert out.loss_sum.item() / 3 == pytest.approx(expected, abs=1e-5)
    assert out.loss_sum.requires_grad


def test_dpo_training_prefers_chosen_responses(make_config, tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "fixtures" / "data" / PAIRS
    config = make_config(
        "dpo",
        data={
            "path": str(path),
            "max_length": 96,
            "max_prompt_length": 48,
            "limit": 16,
            "skip_invalid": True,
            "train_on_prompt": False,
        },
        objective="dpo",
        preference_loss="sigmoid",
        beta=0.5,
        max_steps=8,
        lr=2e-2,
    )
    result = run_training(config)
    rows = [r for r in read_metrics(result.metrics_path) if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert rows[-1]["loss"] < 0.5 and rows[-1]["reward_accuracy"] > 0.5
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()


def test_objective_must_fit_the_data(make_config):
    from elmtune.errors import ElmtuneError

    with pytest.raises(ElmtuneError, match="does not fit"):
        run_training(make_config("mismatch", objective="dpo", max_steps=1))

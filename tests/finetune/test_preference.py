"""Preference optimisation (DPO / hinge / IPO) on the same training loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from elmtune.adapters import AdapterConfig, apply_adapter
from elmtune.datasets import DataConfig, prepare_data
from elmtune.finetune.objectives import PreferenceObjective, build_objective, preference_loss, target_logps
from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import read_metrics
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_tokenizer

PAIRS = "ultrafeedback_binarized_sample.jsonl"
TRL_METRICS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
}


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


def test_label_smoothing_is_conservative_dpo():
    # cDPO: with probability ls the labels are flipped, so the loss mixes -log sigmoid(beta d) and -log sigmoid(-beta d)
    rc, rr = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.5, 0.5])
    beta, ls = 0.3, 0.1

    def neg_log_sigmoid(x):
        return math.log1p(math.exp(-x))

    expected = [(1 - ls) * neg_log_sigmoid(beta * d) + ls * neg_log_sigmoid(-beta * d) for d in (1.0, -1.5, 0.0)]
    assert preference_loss(rc, rr, "sigmoid", beta, label_smoothing=ls).tolist() == pytest.approx(expected)
    assert preference_loss(rc, rr, "sigmoid", beta, label_smoothing=0.0).tolist() == pytest.approx(
        [neg_log_sigmoid(beta * d) for d in (1.0, -1.5, 0.0)]
    )


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing", "message"),
    [
        ("sigmoid", -0.1, r"\[0, 0.5\)"),
        ("sigmoid", 0.5, r"\[0, 0.5\)"),
        ("hinge", 0.1, "sigmoid"),
        ("ipo", 0.1, "sigmoid"),
    ],
)
def test_label_smoothing_is_refused_outside_its_range_or_with_another_loss(loss_type, label_smoothing, message):
    with pytest.raises(ValueError, match=message):
        PreferenceObjective(loss_type=loss_type, beta=0.1, label_smoothing=label_smoothing)
    with pytest.raises(ValueError, match=message):
        zero, one = torch.zeros(1), torch.ones(1)
        preference_loss(zero, zero, loss_type, 0.1, one, one, label_smoothing=label_smoothing)
    with pytest.raises(ValueError, match=message):
        build_objective("dpo", preference_loss=loss_type, beta=0.1, label_smoothing=label_smoothing)


def test_build_objective_passes_label_smoothing():
    objective = build_objective("dpo", preference_loss="sigmoid", beta=0.2, label_smoothing=0.1)
    assert objective == PreferenceObjective(loss_type="sigmoid", beta=0.2, label_smoothing=0.1)
    assert build_objective("dpo").label_smoothing == 0.0


def test_target_logps_sum_target_token_log_probs():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 3, 1, -100, -100], [-100, -100, 6, 0, 2]])
    logps, counts = target_logps(logits[:, :-1], labels[:, 1:])  # position t predicts token t + 1
    expected = []
    for row in range(2):
        total = 0.0
        for t in range(1, 5):
            if labels[row, t] != -100:
                total += F.log_softmax(logits[row, t - 1], -1)[labels[row, t]].item()
        expected.append(total)
    assert logps.tolist() == pytest.approx(expected, abs=1e-5) and counts.tolist() == [2, 3]


def _summed_target_log_probs(model, ids, mask, labels):
    """(N,) summed log-probabilities of the target tokens, via cross-entropy (independent of target_logps)."""
    logits = model(input_ids=ids, attention_mask=mask).logits  # (N, L, V)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")  # (N, L-1)
    return -ce.sum(-1)


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing", "expected"),
    [("sigmoid", 0.0, math.log(2)), ("sigmoid", 0.1, math.log(2)), ("hinge", 0.0, 1.0), ("ipo", 0.0, 25.0)],
)
def test_policy_equals_reference_at_initialisation(loss_type, label_smoothing, expected):
    # B = 0 at initialisation, so the policy is the base model: every log-ratio is zero. A reference computed from
    # anything other than the adapter-free model would break this.
    torch.manual_seed(0)
    base = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).eval()
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
    with torch.no_grad():
        expected_logps = {}
        for side in ("chosen", "rejected"):
            ids, mask, labels = (batch[f"{side}_{key}"] for key in ("input_ids", "attention_mask", "labels"))
            expected_logps[side] = _summed_target_log_probs(base, ids, mask, labels).sum().item()
    model = apply_adapter(base, AdapterConfig(r=4, dropout=0.0))
    objective = PreferenceObjective(loss_type=loss_type, beta=0.1, label_smoothing=label_smoothing)
    out = objective(model.eval(), batch)
    assert out.loss_sum.item() / 3 == pytest.approx(expected, abs=1e-5)
    assert out.loss_sum.requires_grad
    # TRL's metric names, as sums over the pairs (the loop divides by the pair count)
    assert set(out.metrics) == TRL_METRICS
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert out.metrics[name].item() == pytest.approx(0.0, abs=1e-5)
    assert out.metrics["rewards/accuracies"].item() == 0.0  # a tie is not a win, as in TRL
    assert out.metrics["logps/chosen"].item() == pytest.approx(expected_logps["chosen"], rel=1e-5)
    assert out.metrics["logps/rejected"].item() == pytest.approx(expected_logps["rejected"], rel=1e-5)


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
    assert rows[-1]["loss"] < 0.5 and rows[-1]["rewards/accuracies"] > 0.5
    assert TRL_METRICS <= set(rows[-1])
    assert rows[-1]["rewards/margins"] == pytest.approx(rows[-1]["rewards/chosen"] - rows[-1]["rewards/rejected"])
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()


def test_objective_must_fit_the_data(make_config):
    from elmtune.errors import ElmtuneError

    with pytest.raises(ElmtuneError, match="does not fit"):
        run_training(make_config("mismatch", objective="dpo", max_steps=1))

"""Reference log-probs computed once before training: same steps as on the fly, reused on resume, invalidated."""

import dataclasses
import json
import shutil

import pytest
import torch
from accelerate import Accelerator

from elmtune.datasets import prepare_data
from elmtune.finetune.objectives import PreferenceObjective
from elmtune.finetune.policy import build_policy, weights_sha256, with_starting_adapter
from elmtune.finetune.reference_cache import compute_reference_logps, load_or_compute, tokens_sha256
from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import read_metrics
from elmtune.finetune.step import micro_batches
from elmtune.models import load_model, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

STEP_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen")


@pytest.mark.parametrize("start", ["base", "sft"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_a_step_with_precomputed_references_equals_one_computed_on_the_fly(
    start, loss_type, sft_adapter, make_dpo_config
):
    config = with_starting_adapter(make_dpo_config(start_from=sft_adapter if start == "sft" else None))
    policy = build_policy(config, torch.float32)
    with torch.no_grad():  # a trained-looking policy: not equal to the reference
        for param in policy.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    data = prepare_data(config.data, load_tokenizer())
    on_the_fly = PreferenceObjective(loss_type=loss_type, beta=0.5, reference_adapter=policy.reference_adapter)
    accelerator = Accelerator(cpu=True)
    table = compute_reference_logps(policy.model, on_the_fly, data.train, data.collate, 3, accelerator)
    precomputed = dataclasses.replace(on_the_fly, precomputed=table)
    (batch,) = micro_batches(data.train, [7, 2, 5, 0], data.collate, 4)  # shuffled order, another padding
    policy.model.train()
    expected, got = on_the_fly(policy.model, batch), precomputed(policy.model, batch)
    assert got.loss_sum.item() == pytest.approx(expected.loss_sum.item(), abs=1e-6)
    assert got.metrics.keys() == expected.metrics.keys()
    for key, value in expected.metrics.items():
        assert got.metrics[key].item() == pytest.approx(value.item(), abs=1e-6), key


@pytest.mark.parametrize("start", ["base", "sft"])
def test_a_run_with_precomputed_references_equals_one_on_the_fly(start, sft_adapter, make_dpo_config):
    start_from = sft_adapter if start == "sft" else None
    rows = []
    for precompute in (False, True):
        config = make_dpo_config(f"{start}-{precompute}", start_from=start_from, precompute_reference=precompute)
        rows.append([r for r in read_metrics(run_training(config).metrics_path) if "loss" in r])
    assert len(rows[0]) == len(rows[1]) == 2
    for expected, got in zip(*rows, strict=True):
        assert [got[k] for k in STEP_KEYS] == pytest.approx([expected[k] for k in STEP_KEYS], abs=1e-6)


def test_the_cache_is_reused_when_its_key_matches_and_recomputed_when_not(tmp_path, capsys):
    accelerator = Accelerator(cpu=True)
    calls = []

    def compute():
        calls.append(1)
        from elmtune.finetune.reference import ReferenceLogps

        return ReferenceLogps(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]))

    parts = {"data": "d1", "model": "m1", "start_adapter": "none", "compute": "fp32"}
    first, report = load_or_compute(tmp_path, parts, compute, accelerator, print)
    assert report.computed and report.pairs == 2 and len(calls) == 1
    again, report = load_or_compute(tmp_path, parts, compute, accelerator, print)
    assert not report.computed and len(calls) == 1 and torch.equal(again.rejected, first.rejected)
    capsys.readouterr()
    for changed in ({"data": "d2"}, {"model": "m2"}):
        _, report = load_or_compute(tmp_path, {**parts, **changed}, compute, accelerator, print)
        assert report.computed
        assert "changed; recomputing" in capsys.readouterr().out
    assert len(calls) == 3
    info = json.loads((tmp_path / "reference_logps.json").read_text())
    assert info["parts"]["model"] == "m2" and info["pairs"] == 2 and info["seconds"] >= 0


def test_the_key_follows_the_tokenized_data_and_the_model_weights(make_dpo_config):
    config = make_dpo_config()
    tokenizer = load_tokenizer()
    train = prepare_data(config.data, tokenizer).train
    assert tokens_sha256(train) == tokens_sha256(prepare_data(config.data, tokenizer).train)
    fewer = prepare_data(dataclasses.replace(config.data, limit=10), tokenizer).train
    shorter = prepare_data(dataclasses.replace(config.data, max_length=80), tokenizer).train
    assert len({tokens_sha256(train), tokens_sha256(fewer), tokens_sha256(shorter)}) == 3
    base = weights_sha256(load_model("tiny"))
    assert base == weights_sha256(load_model("tiny"))
    other = load_model("tiny")
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-3
    assert weights_sha256(other) != base


def test_a_resume_recomputes_when_the_starting_adapter_changed(sft_adapter, make_dpo_config, tmp_path, capsys):
    start = tmp_path / "start"
    shutil.copytree(sft_adapter, start)
    config = make_dpo_config("changing", start_from=start, precompute_reference=True, save_every=1)
    first = run_training(config)
    shutil.rmtree(first.run_dir / "checkpoints" / "step-00000002")
    shutil.rmtree(first.run_dir / "final")
    before = json.loads((first.run_dir / "reference_logps.json").read_text())["key"]
    (start / "adapter_config.json").write_text((start / "adapter_config.json").read_text() + "\n")
    capsys.readouterr()
    run_training(config, resume=True)
    assert "changed; recomputing" in capsys.readouterr().err
    assert json.loads((first.run_dir / "reference_logps.json").read_text())["key"] != before

"""SFT -> DPO: a run that continues from a saved adapter, with the base plus that adapter (frozen) as the reference."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file

from elmtune.adapters import AdapterConfig
from elmtune.datasets import prepare_data
from elmtune.errors import ElmtuneError
from elmtune.finetune.policy import build_policy, with_starting_adapter
from elmtune.finetune.run import run_training
from elmtune.finetune.run_log import read_metrics
from elmtune.models import load_model, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _summed_target_log_probs(model, batch):
    """(2B,) summed target log-probabilities of chosen then rejected, via cross-entropy (not target_logps)."""
    out = []
    for side in ("chosen", "rejected"):
        ids, mask, labels = (batch[f"{side}_{key}"] for key in ("input_ids", "attention_mask", "labels"))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, L, V)
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
        out.append(-ce.sum(-1))  # (B,)
    return torch.cat(out)


def _peft_on_fresh_base(adapter_dir):
    """Plain peft's loader on a freshly built tiny base: an independent base + adapter."""
    return PeftModel.from_pretrained(load_model("tiny"), str(adapter_dir)).eval()


def test_sft_adapter_is_not_the_base(sft_adapter, make_dpo_config):
    # the premise of the ln 2 test below: base + SFT adapter scores the pairs differently from the base
    config = make_dpo_config()
    data = prepare_data(config.data, load_tokenizer())
    batch = data.collate(list(data.train[:4]))
    base = _summed_target_log_probs(load_model("tiny").eval(), batch)
    tuned = _summed_target_log_probs(_peft_on_fresh_base(sft_adapter), batch)
    assert (base - tuned).abs().max() > 1e-2


def test_dpo_from_sft_starts_at_ln2_with_base_plus_sft_as_reference(sft_adapter, make_dpo_config):
    config = make_dpo_config("from-sft", start_from=sft_adapter, precompute_reference=True)
    result = run_training(config)
    rows = read_metrics(result.metrics_path)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference (base + SFT) at the start
    # the stored reference log-probs are those of base + SFT adapter, loaded by plain peft on a fresh base
    data = prepare_data(config.data, load_tokenizer())
    cached = load_file(str(result.run_dir / "reference_logps.safetensors"))
    expected = _summed_target_log_probs(_peft_on_fresh_base(sft_adapter), data.collate(list(data.train)))
    assert torch.allclose(torch.cat([cached["chosen"], cached["rejected"]]), expected, atol=1e-4, rtol=1e-6)
    # the final adapter is one adapter with the SFT adapter's tensors (no reference copy), trained, on the plain base
    final = load_file(str(result.final_adapter / "adapter_model.safetensors"))
    sft = load_file(str(sft_adapter / "adapter_model.safetensors"))
    assert final.keys() == sft.keys() and all(final[k].shape == sft[k].shape for k in sft)
    assert any(not torch.equal(final[k], sft[k]) for k in sft)
    metadata = json.loads((result.final_adapter / "elmtune_adapter.json").read_text())
    assert metadata["adapter_config"]["r"] == 4 and metadata["base_model"] == "tiny"
    policy = _peft_on_fresh_base(result.final_adapter)
    assert list(policy.peft_config) == ["default"]
    assert not torch.allclose(_summed_target_log_probs(policy, data.collate(list(data.train))), expected, atol=1e-3)


def test_on_the_fly_reference_equals_base_plus_sft(sft_adapter, make_dpo_config):
    config = with_starting_adapter(make_dpo_config(start_from=sft_adapter))
    policy = build_policy(config, torch.float32)
    from elmtune.finetune.objectives import PreferenceObjective

    objective = PreferenceObjective(beta=0.5, reference_adapter=policy.reference_adapter)
    data = prepare_data(config.data, load_tokenizer())
    batch = data.collate(list(data.train[:4]))
    policy.model.train()
    reference = objective.reference_logps(policy.model, batch)
    expected = _summed_target_log_probs(_peft_on_fresh_base(sft_adapter), batch)
    assert torch.allclose(reference, expected, atol=1e-4, rtol=1e-6)
    assert policy.model.training  # switched back
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default" in n for n in trainable)
    out = objective(policy.model, batch)
    assert out.loss_sum.item() / 4 == pytest.approx(math.log(2), abs=1e-6)


def test_resumed_sft_to_dpo_run_equals_the_uninterrupted_one(sft_adapter, make_dpo_config, capsys):
    config = make_dpo_config("whole", start_from=sft_adapter, precompute_reference=True, max_steps=4, save_every=2)
    whole = run_training(config)
    cut = whole.run_dir.parent / "cut"
    shutil.copytree(whole.run_dir, cut, ignore=shutil.ignore_patterns("step-00000004", "final", ".lock"))
    cache = cut / "reference_logps.safetensors"
    written = cache.stat().st_mtime_ns
    capsys.readouterr()
    resumed = run_training(
        make_dpo_config("cut", start_from=sft_adapter, precompute_reference=True, max_steps=4, save_every=2),
        resume=True,
    )
    assert "reused from the run directory" in capsys.readouterr().err
    assert cache.stat().st_mtime_ns == written  # not recomputed
    expected, got = (load_file(str(r.final_adapter / "adapter_model.safetensors")) for r in (whole, resumed))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    whole_rows, resumed_rows = (read_metrics(r.metrics_path) for r in (whole, resumed))
    keys = ("step", "loss", "grad_norm", "rewards/margins", "logps/chosen")
    assert [[r[k] for k in keys] for r in resumed_rows if "loss" in r] == [
        [r[k] for k in keys] for r in whole_rows if "loss" in r
    ]
    assert sum("reference_pairs" in r for r in resumed_rows) == 1  # computed once, by the first part of the run


def test_sft_continues_from_an_adapter(sft_adapter, make_config):
    config = dataclasses.replace(make_config("more-sft", max_steps=1, lr=1e-9), start_from=str(sft_adapter))
    result = run_training(config)
    final = load_file(str(result.final_adapter / "adapter_model.safetensors"))
    sft = load_file(str(sft_adapter / "adapter_model.safetensors"))
    assert final.keys() == sft.keys()
    assert all(torch.allclose(final[k], sft[k], atol=1e-6) for k in sft)  # one tiny step from the SFT weights


def test_given_adapter_settings_must_agree_with_the_saved_adapter(sft_adapter, make_dpo_config):
    config = make_dpo_config(start_from=sft_adapter)
    assert with_starting_adapter(config).adapter == AdapterConfig(r=4, alpha=8, dropout=0.0)
    clash = dataclasses.replace(config, adapter=AdapterConfig(r=16, alpha=8, dropout=0.0, method="dora"))
    with pytest.raises(ElmtuneError) as err:
        run_training(clash)
    message = str(err.value)
    assert "\n" not in message and "adapter.method 'dora' (saved: 'lora')" in message
    assert "adapter.r 16 (saved: 4)" in message
    assert not Path(config.train.output_dir).exists()


def test_an_adapter_of_another_base_is_refused(sft_adapter, make_dpo_config, tmp_path):
    other = tmp_path / "other-base"
    shutil.copytree(sft_adapter, other)
    metadata = json.loads((other / "elmtune_adapter.json").read_text())
    metadata["base"]["layers"][1] = "12/3x64:768"
    metadata["base"]["fingerprint"] = "different"
    (other / "elmtune_adapter.json").write_text(json.dumps(metadata))
    config = make_dpo_config("refused", start_from=other)
    with pytest.raises(ElmtuneError, match="trained on a different base model: layer 1 is 12/3x64:768 there"):
        run_training(config)
    assert not (tmp_path / "refused").exists()


def test_the_reference_switch_covers_dora_sub_projections_and_trained_norms(trained_adapter, make_dpo_config, tmp_path):
    # q,v are row blocks of the fused qkv_proj; DoRA magnitudes and norm copies must switch with the LoRA tensors
    settings = {"method": "dora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": ("q", "v"), "train_norms": True}
    sft = trained_adapter(Path("tiny"), tmp_path / "dora-sft", base_name="tiny", scale=0.2, **settings)
    config = with_starting_adapter(make_dpo_config(start_from=sft))
    policy = build_policy(config, torch.float32)
    from elmtune.adapters import load_adapter
    from elmtune.finetune.objectives import PreferenceObjective

    data = prepare_data(config.data, load_tokenizer())
    batch = data.collate(list(data.train[:4]))
    with torch.no_grad():  # move the policy away from the SFT weights: the reference must not follow
        for param in policy.model.parameters():
            if param.requires_grad:
                param.add_(0.1)
    objective = PreferenceObjective(beta=0.5, reference_adapter=policy.reference_adapter)
    reference = objective.reference_logps(policy.model.train(), batch)
    expected = _summed_target_log_probs(load_adapter(load_model("tiny"), sft), batch)
    assert torch.allclose(reference, expected, atol=1e-4, rtol=1e-6)
    moved = _summed_target_log_probs(policy.model.eval(), batch)
    assert (moved - expected).abs().max() > 1e-2

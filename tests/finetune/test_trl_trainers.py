"""The ecosystem's trainers run on elmtune's OpenELM: TRL's SFTTrainer and DPOTrainer with a peft LoRA config.

They reach the output head through ``get_output_embeddings()``, which must be the tied ``lm_head`` (Apple's remote code
returns ``None`` there and fails).
"""

import math
import warnings

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_tokenizer

pytestmark = pytest.mark.trl

TEXTS = [
    "Below is an instruction. Answer the question: is the sky blue? The answer is true.",
    "Pick the better solution to keep bread fresh. Solution 1: a sealed bag. The answer is solution1.",
    "Which word completes the sentence? The cat sat on the mat. The answer is option2.",
    "Question: can fish breathe air? The answer is false.",
]


def _tiny():
    torch.manual_seed(0)
    return OpenELMForCausalLM(OpenELMConfig.from_preset("tiny"))


def _two_cpu_steps(output_dir) -> dict:
    """The trainer settings both tests share: two logged steps on the CPU, nothing saved or reported."""
    return {
        "output_dir": str(output_dir),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "max_length": 64,
    }


def _lora():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["qkv_proj", "out_proj", "proj_1", "proj_2"])


def test_sft_trainer_trains_openelm_with_a_peft_adapter(tmp_path):
    import trl  # a dev dependency; the oldest-versions CI run deselects the `trl` marker

    model = _tiny()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = trl.SFTConfig(**_two_cpu_steps(tmp_path), dataset_text_field="text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"text": TEXTS}),
            processing_class=load_tokenizer(),
            peft_config=_lora(),
        )
        result = trainer.train()
    assert trainer.state.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert 9.0 < losses[0] < 12.0  # about ln(32000) = 10.4 for random weights
    assert math.isfinite(result.training_loss)
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    changed = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and p.detach().abs().sum() > 0]
    assert changed  # LoRA B starts at zero: a non-zero B means the optimizer stepped
    base = trainer.model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" not in name and "base_layer" not in name and name in frozen:
            assert torch.equal(param.detach(), frozen[name]), name  # the base stays frozen
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight  # still tied


def test_dpo_trainer_runs_on_openelm_with_a_peft_adapter(tmp_path):
    import trl  # a dev dependency; the oldest-versions CI run deselects the `trl` marker

    pairs = {
        "prompt": ["Is the sky blue?", "Can fish breathe air?"],
        "chosen": [" Yes, on a clear day.", " No, they use gills."],
        "rejected": [" No.", " Yes, always."],
    }
    args = trl.DPOConfig(**_two_cpu_steps(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(
            model=_tiny(),
            args=args,
            train_dataset=Dataset.from_dict(pairs),
            processing_class=load_tokenizer(),
            peft_config=_lora(),
        )
        trainer.train()
    first = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert abs(first["loss"] - math.log(2)) < 1e-4  # the adapter starts as the identity: policy == reference
    assert trainer.state.global_step == 2

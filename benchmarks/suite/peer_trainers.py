"""The real-data run as users run it without elmtune: TRL's ``SFTTrainer`` and transformers' ``Trainer`` with peft.

Both take every setting from the same ``RunConfig`` as the elmtune side (:func:`suite.real_data.run_config`): the
LoRA targets, rank, alpha and dropout (peft's LoRA on Apple's projections and the token embedding), the micro-batch,
accumulation, steps, learning rate, AdamW betas/epsilon, weight decay, gradient clipping, length-grouped batches,
max length and which tokens carry the loss. The examples are rendered with elmtune's template code, so every side
trains on the same tokens: TRL gets prompt/completion text and tokenises it itself (the side checks that its tokens
equal elmtune's); the ``Trainer`` side gets elmtune's token ids and labels and pads them with
``DataCollatorForSeq2Seq`` to the longest in the batch. Neither has a z-loss (the recipe's 1e-4 is elmtune's only).
Each side runs in its own process and ends by saving the adapter, as ``elmtune train`` does.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from suite.measure import peak_rss_mib, set_threads
from suite.real_data import DATA, run_config
from suite.settings import Settings
from suite.train_sides import APPLE_TARGETS

EMBEDDING = "token_embeddings"


def _examples(config: Any) -> list[Any]:
    from elmtune.datasets import load_sft_examples

    examples, _ = load_sft_examples(DATA, config.data.format, limit=config.data.limit)
    return examples


def elmtune_tokens(config: Any, tokenizer: Any) -> list[Any]:
    """elmtune's tokenisation of the run's examples (``TokenizedExample``: ids and labels)."""
    from elmtune.datasets import TokenizeConfig, tokenize_sft

    data = config.data
    tokenize = TokenizeConfig(max_length=data.max_length, template=data.template, train_on_prompt=data.train_on_prompt)
    tokenized, _ = tokenize_sft(_examples(config), tokenizer, tokenize)
    return tokenized


def prompt_completion_rows(config: Any) -> list[dict[str, str]]:
    """Each example rendered by elmtune's template: the text before the first target, and the rest (EOS included)."""
    from elmtune.datasets import render_sft

    rows = []
    for example in _examples(config):
        rendered = render_sft(example, config.data.template)
        first_target = next(i for i, segment in enumerate(rendered.segments) if segment.target)
        prompt = "".join(segment.text for segment in rendered.segments[:first_target])
        rows.append({"prompt": prompt, "completion": rendered.text[len(prompt) :]})
    return rows


def lora_settings(config: Any) -> dict[str, Any]:
    """The run's rank, alpha and dropout as peft's ``LoraConfig`` keywords (plain values: they travel as JSON)."""
    adapter = config.adapter
    return {"r": adapter.r, "lora_alpha": adapter.alpha, "lora_dropout": adapter.dropout}


def peft_lora(settings: dict[str, Any]) -> Any:
    """peft's LoRA with :func:`lora_settings` on Apple's projections and the token embedding."""
    from peft import LoraConfig

    return LoraConfig(**settings, target_modules=[*APPLE_TARGETS, EMBEDDING], task_type="CAUSAL_LM")


def lora_config(config: Any) -> Any:
    """peft's LoRA for the run's ``RunConfig``: its rank, alpha and dropout on the peers' targets."""
    return peft_lora(lora_settings(config))


def trainer_arguments(config: Any, output_dir: str) -> dict[str, Any]:
    """``TrainingArguments`` keywords for the run (shared by ``SFTConfig``): the recipe's optimisation, on the CPU."""
    train = config.train
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "max_steps": train.max_steps,
        "learning_rate": train.lr,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr": train.min_lr},
        "warmup_steps": train.warmup,
        "adam_beta1": train.betas[0],
        "adam_beta2": train.betas[1],
        "adam_epsilon": train.eps,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "train_sampling_strategy": "group_by_length" if train.group_by_length else "random",
        "activation_checkpointing": train.gradient_checkpointing,
        "seed": train.seed,
        "use_cpu": True,
        # fp32 like the elmtune side: TRL's SFTConfig defaults to bf16 autocast, which on a CPU without bf16 matmul
        # instructions runs in torch's fallback GEMM, dozens of times slower.
        "bf16": False,
        "fp16": False,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
    }


def _count_positions(trainer: Any) -> list[int]:
    """Make the trainer's collator count the token positions of every batch it builds (padding included).

    Returns:
        The running count (one number in a list), updated as batches are collated.
    """
    positions = [0]
    collate = trainer.data_collator

    def counting(features: list[Any]) -> Any:
        batch = collate(features)
        positions[0] += batch["input_ids"].numel()  # (B, L): the positions the model computes
        return batch

    trainer.data_collator = counting
    return positions


def _finish(trainer: Any, settings: Settings, examples: int, info: dict[str, Any]) -> dict[str, Any]:
    """Train, save the adapter, and report the run's metrics.

    ``loop_seconds`` is the ``Trainer``'s own ``train_runtime`` (the training loop: batches, steps, logging; not the
    start-up, tokenisation or saving); ``positions`` counts the token positions of every collated batch, padding
    included, i.e. what the model computed.
    """
    positions = _count_positions(trainer)
    output = trainer.train()
    trainer.save_model(tempfile.mkdtemp(prefix="peer-adapter-", dir=settings.workdir))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics = {
        "examples": examples,
        "peak_rss_mib": peak_rss_mib(),
        "loop_seconds": output.metrics["train_runtime"],
        "positions": positions[0],
    }
    return {"metrics": metrics, "info": {**info, "adapter_parameters": trainable}}


def trl_sft(settings: Settings) -> dict[str, Any]:
    """TRL ``SFTTrainer`` + peft on elmtune's model: the run's prompt/completion text, padding to the longest."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from elmtune.models import load_model, load_tokenizer

    set_threads(settings)
    out = tempfile.mkdtemp(prefix="trl-", dir=settings.workdir)
    config = run_config(settings, out)
    tokenizer = load_tokenizer()
    args = SFTConfig(
        **for_installed(SFTConfig, trainer_arguments(config, out)),
        max_length=config.data.max_length,
        completion_only_loss=not config.data.train_on_prompt,
        packing=False,
        padding_free=False,
        pad_to_multiple_of=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(config.model)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(prompt_completion_rows(config)),
            processing_class=tokenizer,
            peft_config=lora_config(config),
        )
    theirs = [list(ids) for ids in trainer.train_dataset["input_ids"]]
    ours = [example.input_ids.tolist() for example in elmtune_tokens(config, tokenizer)]
    info = {"identical_tokens": theirs == ours, "tokens": sum(map(len, theirs))}
    return _finish(trainer, settings, config.data.limit, info)


def apple_run_file(settings: Settings) -> Path:
    """Where :func:`write_apple_run` puts the Apple side's run (in the benchmark's scratch directory)."""
    return Path(settings.workdir) / "apple-run.json"


def write_apple_run(settings: Settings) -> dict[str, Any]:
    """The real-data group's set-up: everything the Apple side needs, as JSON, so that it runs without elmtune.

    Apple's code may run under another environment (``--apple-python``, an old transformers that elmtune does not
    support), so elmtune's part (the settings from the recipe, the tokenisation) is done here, in the benchmark's
    own process: the token ids and labels, the ``TrainingArguments`` keywords and the LoRA settings.
    """
    if not settings.apple_code:
        return {}
    from elmtune.models import load_tokenizer

    config = run_config(settings, settings.workdir)
    rows = [
        {"input_ids": t.input_ids.tolist(), "labels": t.labels.tolist()}
        for t in elmtune_tokens(config, load_tokenizer())
    ]
    run = {
        "preset": config.model,
        "seed": config.train.seed,
        "examples": config.data.limit,
        "rows": rows,
        "trainer": {k: v for k, v in trainer_arguments(config, "").items() if k != "output_dir"},
        "lora": lora_settings(config),
    }
    apple_run_file(settings).write_text(json.dumps(run))
    return {}


def for_installed(arguments_class: type, keywords: dict[str, Any]) -> dict[str, Any]:
    """:func:`trainer_arguments`' keywords in the names ``arguments_class`` (a ``TrainingArguments``) knows.

    Older transformers name two of them differently: ``group_by_length`` (a bool) before the sampling strategy, and
    ``gradient_checkpointing`` before ``activation_checkpointing``.
    """
    from dataclasses import fields

    known = {f.name for f in fields(arguments_class)}
    keywords = dict(keywords)
    if "train_sampling_strategy" not in known:
        keywords["group_by_length"] = keywords.pop("train_sampling_strategy") == "group_by_length"
    if "activation_checkpointing" not in known:
        keywords["gradient_checkpointing"] = keywords.pop("activation_checkpointing")
    return keywords


def _training_arguments(keywords: dict[str, Any], output_dir: str) -> Any:
    """``TrainingArguments`` of the installed transformers, from :func:`trainer_arguments`' keywords."""
    from transformers import TrainingArguments

    return TrainingArguments(**for_installed(TrainingArguments, dict(keywords, output_dir=output_dir)))


def apple_trainer(settings: Settings) -> dict[str, Any]:
    """transformers ``Trainer`` + peft on Apple's modeling code: elmtune's token ids, ``DataCollatorForSeq2Seq``.

    Reads the run from :func:`write_apple_run`'s file and imports no elmtune (it may run under ``--apple-python``);
    the collator pads with the bundled Llama-2 tokenizer's pad id 0, as elmtune's tokenizer does.
    """
    import torch
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer

    from suite.apple_code import apple_model, bundled_tokenizer

    set_threads(settings)
    run = json.loads(apple_run_file(settings).read_text())
    out = tempfile.mkdtemp(prefix="apple-", dir=settings.workdir)
    tokenizer = bundled_tokenizer()  # pad id 0
    rows = [{**row, "attention_mask": [1] * len(row["input_ids"])} for row in run["rows"]]
    lora = peft_lora(run["lora"])
    torch.manual_seed(run["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(apple_model(settings.apple_code, run["preset"]), lora)
        trainer = Trainer(
            model=model,
            args=_training_arguments(run["trainer"], out),
            train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
        )
    info = {"identical_tokens": True, "tokens": sum(len(row["input_ids"]) for row in rows)}
    return _finish(trainer, settings, run["examples"], info)

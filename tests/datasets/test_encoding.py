"""Tokenisation: ids equal whole-string tokenisation; labels match independent references (LLM-Adapters' own
prompt-length masking, transformers' ``{% generation %}`` assistant masks); truncation policies and counts."""

import numpy as np
import pytest

from elmtune.datasets import (
    IGNORE_INDEX,
    DataRowError,
    PreferenceTokenizeConfig,
    TextExample,
    TokenizeConfig,
    alpaca_prompt,
    load_preference_examples,
    load_sft_examples,
    render_preference,
    render_sft,
    tokenize_preference,
    tokenize_sft,
)
from elmtune.datasets.encoding import target_mask

# Apple's chat format with transformers' generation markers around what an assistant turn must learn to produce.
GENERATION_MARKED = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% generation %}"
    "{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
)
SFT_FILES = ["commonsense_train_sample200.json", "alpaca_en_demo_first200.json", "chat_multiturn_sample.jsonl"]


@pytest.fixture(scope="module")
def loaded(data_dir):
    return {name: load_sft_examples(data_dir / name)[0] for name in SFT_FILES}


@pytest.mark.parametrize("name", SFT_FILES)
def test_ids_equal_tokenizing_the_whole_rendered_string(tokenizer, loaded, name):
    examples = loaded[name]
    tokenized, report = tokenize_sft(examples, tokenizer, TokenizeConfig(max_length=100_000))
    assert report.kept == len(examples) and report.truncated == 0
    for example, item in zip(examples, tokenized, strict=True):
        text = render_sft(example).text
        assert item.input_ids.tolist() == tokenizer(text)["input_ids"]
        without_bos = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert item.input_ids.tolist() == [tokenizer.bos_token_id] + without_bos


def test_preference_ids_equal_whole_string_tokenisation(tokenizer, data_dir):
    pairs, _ = load_preference_examples(data_dir / "ultrafeedback_binarized_sample.jsonl")
    config = PreferenceTokenizeConfig(max_length=100_000, max_prompt_length=50_000)
    tokenized, report = tokenize_preference(pairs[:40], tokenizer, config)
    assert report.truncated == 0
    for pair, item in zip(pairs[:40], tokenized, strict=True):
        chosen, rejected = render_preference(pair)
        assert item.chosen_input_ids.tolist() == tokenizer(chosen.text)["input_ids"]
        assert item.rejected_input_ids.tolist() == tokenizer(rejected.text)["input_ids"]


@pytest.mark.parametrize("name", SFT_FILES[:2])
def test_response_mask_matches_llm_adapters_masking(tokenizer, loaded, name):
    """LLM-Adapters (train_on_inputs=False): tokenize(prompt + output) + [EOS], the first len(tokenize(prompt))
    labels set to -100."""
    examples = loaded[name]
    tokenized, _ = tokenize_sft(examples, tokenizer)
    for e, item in zip(examples, tokenized, strict=True):
        prompt = alpaca_prompt(e.instruction, e.input)
        full = tokenizer(prompt + e.output)["input_ids"] + [tokenizer.eos_token_id]
        n_prompt = len(tokenizer(prompt)["input_ids"])
        assert item.input_ids.tolist() == full
        assert item.labels.tolist() == [IGNORE_INDEX] * n_prompt + full[n_prompt:]


def test_chat_mask_matches_transformers_assistant_mask(tokenizer, loaded):
    examples = loaded["chat_multiturn_sample.jsonl"]
    tokenized, _ = tokenize_sft(examples, tokenizer, TokenizeConfig(max_length=100_000))
    for e, item in zip(examples, tokenized, strict=True):
        messages = [{"role": m.role, "content": m.content} for m in e.messages]
        ref = tokenizer.apply_chat_template(
            messages,
            chat_template=GENERATION_MARKED,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert item.input_ids.tolist()[1:] == ref["input_ids"]  # the reference has no BOS
        expected = [tok if m else IGNORE_INDEX for tok, m in zip(ref["input_ids"], ref["assistant_masks"], strict=True)]
        assert item.labels.tolist() == [IGNORE_INDEX] + expected
        # Every assistant turn is trained, each ending in EOS; BOS appears once, at the start.
        ids, targets = item.input_ids, item.labels != IGNORE_INDEX
        n_assistant = sum(m.role == "assistant" for m in e.messages)
        assert int((ids[targets] == tokenizer.eos_token_id).sum()) == n_assistant
        runs = np.flatnonzero(np.diff(targets.astype(int)) == -1)  # last index of each target run
        assert len(runs) == n_assistant and all(ids[runs] == tokenizer.eos_token_id)
        assert ids[0] == tokenizer.bos_token_id and int((ids == tokenizer.bos_token_id).sum()) == 1


def test_train_on_prompt_targets_every_token_but_bos(tokenizer, loaded):
    examples = loaded["commonsense_train_sample200.json"][:20]
    tokenized, _ = tokenize_sft(examples, tokenizer, TokenizeConfig(train_on_prompt=True))
    for item in tokenized:
        assert item.labels[0] == IGNORE_INDEX and item.labels[1:].tolist() == item.input_ids[1:].tolist()
        assert item.input_ids[-1] == tokenizer.eos_token_id


def test_target_mask_overlap_rule():
    offsets = [(0, 3), (3, 7), (7, 7), (7, 9), (9, 12)]
    # target chars 5..9: token 1 straddles (3, 7) -> target; zero-width token at 7 counts as char 7 -> target
    assert target_mask(offsets, [(5, 9)]).tolist() == [False, True, True, True, False]
    assert target_mask(offsets, [(0, 1), (11, 12)]).tolist() == [True, False, False, False, True]
    assert target_mask([], [(0, 1)]).tolist() == []


def test_truncation_policies_and_counts(tokenizer, loaded):
    examples = loaded["alpaca_en_demo_first200.json"]
    full, _ = tokenize_sft(examples, tokenizer, TokenizeConfig(max_length=100_000))
    limit = 128
    long = [i for i, item in enumerate(full) if len(item) > limit]
    assert 0 < len(long) < len(full)

    right, report = tokenize_sft(examples, tokenizer, TokenizeConfig(max_length=limit))
    no_target = [i for i in long if (full[i].labels[:limit] == IGNORE_INDEX).all()]
    assert report.truncated == len(long) - len(no_target) and report.dropped_no_target == len(no_target)
    assert report.kept == len(full) - len(no_target) and report.longest == max(len(x) for x in full)
    kept = [i for i in range(len(full)) if i not in no_target]
    for i, item in zip(kept, right, strict=True):
        assert item.input_ids.tolist() == full[i].input_ids[:limit].tolist()
        assert item.labels.tolist() == full[i].labels[:limit].tolist()
        assert item.truncated == (i in long) and item.where == examples[i].where

    left, report = tokenize_sft(examples, tokenizer, TokenizeConfig(max_length=limit, truncation_side="left"))
    assert report.truncated == len(long) and report.kept == len(full)
    for i in long:
        ids = left[i].input_ids.tolist()
        assert ids == [tokenizer.bos_token_id] + full[i].input_ids[-(limit - 1) :].tolist()
        assert left[i].labels[-1] == tokenizer.eos_token_id

    dropped, report = tokenize_sft(examples, tokenizer, TokenizeConfig(max_length=limit, overlong="drop"))
    assert report.dropped_overlong == len(long) and len(dropped) == len(full) - len(long)
    assert all(len(x) <= limit for x in dropped)

    with pytest.raises(DataRowError, match=rf"row {long[0] + 1}: \d+ tokens, more than max_length {limit}"):
        tokenize_sft(examples, tokenizer, TokenizeConfig(max_length=limit, overlong="error"))


def test_special_token_text_is_refused_or_skipped(tokenizer):
    examples = [TextExample("fine", where="t.jsonl, line 1"), TextExample("oops </s> here", where="t.jsonl, line 2")]
    with pytest.raises(DataRowError, match=r"t\.jsonl, line 2: field 'text' contains the special-token text '</s>'"):
        tokenize_sft(examples, tokenizer)
    kept, report = tokenize_sft(examples, tokenizer, skip_invalid=True)
    assert len(kept) == 1 and report.invalid == 1 and report.kept == 1


def test_config_validation():
    with pytest.raises(ValueError, match="max_length"):
        TokenizeConfig(max_length=1)
    with pytest.raises(ValueError, match="overlong"):
        TokenizeConfig(overlong="wrap")
    with pytest.raises(ValueError, match="truncation_side"):
        TokenizeConfig(truncation_side="middle")
    with pytest.raises(ValueError, match="template"):
        TokenizeConfig(template="llama2")

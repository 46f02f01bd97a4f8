"""The KV cache across transformers releases: both argument names, the output field the installed release declares,
no silently ignored keywords, and cached generation equal to uncached generation in every decoding mode we use."""

import logging
import warnings
from dataclasses import fields

import pytest
import torch
from transformers import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import logging as hf_logging

from elmtune.adapters import AdapterConfig, apply_adapter
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model

# The field name transformers' own output classes declare for the cache, read independently of elmtune.
DECLARED = "cache" if "cache" in {f.name for f in fields(BaseModelOutputWithPast)} else "past_key_values"


@pytest.fixture
def deprecation_messages():
    """Everything transformers logs or warns while the test runs, to assert that nothing is deprecated."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    hf_logging.get_logger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield records
    hf_logging.get_logger().removeHandler(handler)
    records += [str(w.message) for w in caught]


def _no_deprecation(messages):
    assert not [m for m in messages if "deprecat" in m.lower()], messages


def test_cache_is_returned_under_the_declared_field(tiny_model):
    out = tiny_model(torch.tensor([[5, 6, 7]]), use_cache=True)
    assert isinstance(out[DECLARED], Cache) and out[DECLARED].get_seq_length() == 3
    assert tiny_model(torch.tensor([[5, 6, 7]]), use_cache=False).get(DECLARED) is None


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_both_cache_argument_names_continue_the_sequence(tiny_model, name, deprecation_messages):
    torch.manual_seed(6)
    ids = torch.randint(3, 32000, (1, 14))
    full = tiny_model(ids).logits  # (1, 14, V)
    first = tiny_model(ids[:, :8], use_cache=True)
    chunk = tiny_model(ids[:, 8:11], use_cache=True, **{name: first[DECLARED]})  # multi-token step
    last = tiny_model(ids[:, 11:12], use_cache=True, **{name: chunk[DECLARED]})
    stepped = torch.cat([first.logits, chunk.logits, last.logits], dim=1)
    assert (stepped - full[:, :12]).abs().max() <= 1e-5
    assert last[DECLARED].get_seq_length() == 12
    _no_deprecation(deprecation_messages)


def test_both_cache_names_at_once_are_refused(tiny_model):
    cache = tiny_model(torch.tensor([[5, 6]]), use_cache=True)[DECLARED]
    with pytest.raises(TypeError, match="not both"):
        tiny_model(torch.tensor([[7]]), cache=cache, past_key_values=cache)


@pytest.mark.parametrize("keyword", ["past_key_value", "layer_past", "head_mask", "cu_seq_lens_q"])
def test_unknown_keywords_raise_instead_of_being_ignored(tiny_model, keyword):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(TypeError, match=keyword):
        tiny_model(ids, **{keyword: None})
    with pytest.raises(TypeError, match=keyword):
        tiny_model.transformer(ids, **{keyword: None})


def test_generic_keywords_are_honoured(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8]])
    out = tiny_model(ids)
    as_tuple = tiny_model(ids, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    same = tiny_model(ids, cache_position=torch.arange(4), output_attentions=False).logits
    assert torch.equal(same, out.logits)
    with pytest.raises(ValueError, match="attention weights"):
        tiny_model(ids, output_attentions=True)
    labels = ids.clone()
    total = tiny_model(ids, labels=labels, num_items_in_batch=torch.tensor(3)).loss  # 3 predicted tokens, summed
    assert torch.allclose(total, tiny_model(ids, labels=labels).loss, atol=1e-6)


def _greedy_without_cache(model, prompt, steps):
    """Naive greedy decoding: a full forward pass over the whole sequence per step, rows one at a time."""
    rows = []
    for row in prompt:
        ids = row[row != 0].tolist()  # left padding is id 0 in these prompts
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        rows.append(ids[-steps:])
    return torch.tensor(rows)


def _prompts(seed, batch, length):
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 32000, (batch, length), generator=generator)
    mask = torch.ones_like(prompt)
    for row in range(1, batch):
        mask[row, : 2 * row] = 0  # rows left-padded by different amounts
    return prompt * mask, mask


def _assert_cached_equals_uncached(model, prompt, mask, steps, **settings):
    kwargs = dict(attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, pad_token_id=0, **settings)
    with torch.inference_mode():
        cached = model.generate(input_ids=prompt, use_cache=True, **kwargs)[:, prompt.shape[1] :]
        uncached = model.generate(input_ids=prompt, use_cache=False, **kwargs)[:, prompt.shape[1] :]
    assert torch.equal(cached, uncached)
    return cached


@torch.inference_mode()
def test_batched_left_padded_greedy_generation_equals_a_naive_loop(tiny_model, deprecation_messages):
    prompt, mask = _prompts(5, 3, 10)
    generated = _assert_cached_equals_uncached(tiny_model, prompt, mask, 8, do_sample=False)
    assert torch.equal(generated, _greedy_without_cache(tiny_model, prompt, 8))
    _no_deprecation(deprecation_messages)


def test_generation_with_a_peft_adapter_is_the_same_with_and_without_cache(perturbed_adapter_model):
    prompt, mask = _prompts(8, 2, 9)
    generated = _assert_cached_equals_uncached(perturbed_adapter_model, prompt, mask, 8, do_sample=False)
    with torch.inference_mode():
        assert torch.equal(generated, _greedy_without_cache(perturbed_adapter_model, prompt, 8))
        with perturbed_adapter_model.disable_adapter():
            base = perturbed_adapter_model.generate(
                input_ids=prompt, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0
            )[:, prompt.shape[1] :]
    assert not torch.equal(generated, base)  # the adapter really takes part in the cached decode


@torch.inference_mode()
def test_a_static_cache_decodes_as_the_naive_loop(tiny_model):
    """transformers' preallocated cache (``cache_implementation="static"``) writes by position, not by appending."""
    prompt, mask = _prompts(6, 3, 10)
    static = tiny_model.generate(
        input_ids=prompt,
        attention_mask=mask,
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        cache_implementation="static",
    )[:, prompt.shape[1] :]
    assert torch.equal(static, _greedy_without_cache(tiny_model, prompt, 8))


def test_beam_search_is_the_same_with_and_without_cache(tiny_model):
    prompt, mask = _prompts(9, 2, 7)
    _assert_cached_equals_uncached(tiny_model, prompt, mask, 6, num_beams=4, do_sample=False, early_stopping=True)


@pytest.mark.slow
def test_cached_generation_equals_uncached_on_the_270m_shape():
    model = load_model("270M", dtype="float32").eval()
    prompt, mask = _prompts(0, 2, 12)
    generated = _assert_cached_equals_uncached(model, prompt, mask, 8, do_sample=False)
    assert torch.equal(generated, _greedy_without_cache(model, prompt, 8))


@pytest.fixture
def perturbed_adapter_model(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(tiny_model, AdapterConfig(targets=("all",), r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def test_untied_config_generates_with_its_own_head():
    torch.manual_seed(1)
    model = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny", share_input_output_layers=False)).eval()
    prompt, mask = _prompts(2, 2, 6)
    _assert_cached_equals_uncached(model, prompt, mask, 5, do_sample=False)

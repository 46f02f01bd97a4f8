"""Generation on the tiny preset against independent references: an uncached argmax loop (with and without a peft
adapter), one-by-one generation for batches, and a forced EOS."""

import torch
from peft import PeftModel

from elmtune.inference import (
    DecodingSettings,
    ModelSource,
    Prompt,
    encode_prompt,
    generate_replies,
    generate_reply,
    load_for_generation,
)
from elmtune.models import load_model

PROMPTS = [
    Prompt.from_text("Hello there, who are you?"),
    Prompt.from_text("Hi", system="Be brief."),
    Prompt.from_text("Once upon a time", raw=True),
    Prompt.from_text("Name three colours and say which one is the warmest of them."),
]


def test_greedy_equals_an_uncached_argmax_loop(loaded, greedy_reference):
    model, tokenizer = loaded
    for prompt in PROMPTS[:2]:
        reply = generate_reply(model, tokenizer, prompt, DecodingSettings(max_new_tokens=12))
        ids = encode_prompt(tokenizer, prompt.render(tokenizer))
        expected = greedy_reference(model, ids, 12, tokenizer.eos_token_id)
        assert list(reply.token_ids) == expected
        assert reply.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert not reply.stopped_at_eos


def test_adapter_greedy_equals_peft_from_pretrained(tmp_path, trained_adapter, greedy_reference):
    adapter = trained_adapter("tiny", tmp_path / "adapter", scale=0.5)
    model, tokenizer = load_for_generation(ModelSource("tiny", adapter, device="cpu"))
    reference = PeftModel.from_pretrained(load_model("tiny"), str(adapter)).eval()
    base, _ = load_for_generation(ModelSource("tiny", device="cpu"))
    ids = encode_prompt(tokenizer, PROMPTS[0].render(tokenizer))
    reply = generate_reply(model, tokenizer, PROMPTS[0], DecodingSettings(max_new_tokens=12))
    assert list(reply.token_ids) == greedy_reference(reference, ids, 12, tokenizer.eos_token_id)
    assert list(reply.token_ids) != greedy_reference(base, ids, 12, tokenizer.eos_token_id)  # the adapter matters


def test_streamed_pieces_concatenate_to_the_reply(loaded):
    model, tokenizer = loaded
    pieces: list[str] = []
    reply = generate_reply(model, tokenizer, PROMPTS[0], DecodingSettings(max_new_tokens=24), on_text=pieces.append)
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == reply.text == tokenizer.decode(list(reply.token_ids), skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_and_not_greedy(loaded):
    model, tokenizer = loaded
    sampled = DecodingSettings(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=100, seed=3)
    state = torch.get_rng_state()
    first = generate_reply(model, tokenizer, PROMPTS[0], sampled)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left as it was
    again = generate_reply(model, tokenizer, PROMPTS[0], sampled)
    other_seed = generate_reply(model, tokenizer, PROMPTS[0], DecodingSettings(16, 1.0, 0.95, 100, seed=4))
    greedy = generate_reply(model, tokenizer, PROMPTS[0], DecodingSettings(max_new_tokens=16))
    assert first.token_ids == again.token_ids
    assert first.token_ids != greedy.token_ids and first.token_ids != other_seed.token_ids


def test_top_k_one_sampling_is_greedy(loaded):
    model, tokenizer = loaded
    greedy = generate_reply(model, tokenizer, PROMPTS[1], DecodingSettings(max_new_tokens=10))
    top1 = generate_reply(model, tokenizer, PROMPTS[1], DecodingSettings(max_new_tokens=10, temperature=2.0, top_k=1))
    assert top1.token_ids == greedy.token_ids


def test_repetition_penalty_follows_ctrls_formula(loaded, greedy_reference):
    """CTRL: a seen token's logit is divided by the penalty when positive, multiplied when negative."""
    model, tokenizer = loaded
    penalty = 1.5
    ids = encode_prompt(tokenizer, PROMPTS[0].render(tokenizer))
    sequence, expected = list(ids), []
    with torch.no_grad():
        for _ in range(10):
            logits = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1].clone()  # (V,)
            seen = torch.tensor(sorted(set(sequence)))
            logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
            expected.append(int(logits.argmax()))
            sequence.append(expected[-1])
    reply = generate_reply(
        model, tokenizer, PROMPTS[0], DecodingSettings(max_new_tokens=10, repetition_penalty=penalty)
    )
    assert list(reply.token_ids) == expected
    assert expected != greedy_reference(model, ids, 10, tokenizer.eos_token_id)


def test_batches_equal_one_by_one_generation_in_input_order(loaded):
    model, tokenizer = loaded
    settings = DecodingSettings(max_new_tokens=10)
    alone = [generate_reply(model, tokenizer, prompt, settings) for prompt in PROMPTS]
    assert len({len(encode_prompt(tokenizer, p.render(tokenizer))) for p in PROMPTS}) == len(PROMPTS)  # padded
    for batch_size in (2, 4):
        batched = generate_replies(model, tokenizer, PROMPTS, settings, batch_size=batch_size)
        assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
        assert [r.text for r in batched] == [r.text for r in alone]


def test_generation_stops_at_eos(loaded, greedy_reference):
    """EOS is made the argmax at the 4th new token of one prompt (a logits hook keyed on the position)."""
    model, tokenizer = loaded
    eos, stop_after = tokenizer.eos_token_id, 3
    prompt_ids = encode_prompt(tokenizer, PROMPTS[1].render(tokenizer))
    free = greedy_reference(model, prompt_ids, 8, eos)
    stop_length = len(prompt_ids) + stop_after  # sequence length whose last position predicts EOS

    def force_eos(module, args, kwargs, output):
        positions = kwargs.get("position_ids")  # (B, L) from generate (padding excluded); None in the reference loop
        last = positions[:, -1] if positions is not None else torch.tensor([kwargs["input_ids"].shape[1] - 1])  # (B,)
        rows = last == stop_length - 1
        output.logits[rows, -1, eos] = output.logits[:, -1].max() + 10.0
        return output

    handle = model.register_forward_hook(force_eos, with_kwargs=True)
    try:
        expected = greedy_reference(model, prompt_ids, 8, eos)
        reply = generate_reply(model, tokenizer, PROMPTS[1], DecodingSettings(max_new_tokens=8))
        others = generate_replies(model, tokenizer, PROMPTS[:2], DecodingSettings(max_new_tokens=8), batch_size=2)
    finally:
        handle.remove()
    assert expected == [*free[:stop_after], eos]
    assert list(reply.token_ids) == expected and reply.stopped_at_eos
    assert reply.text == tokenizer.decode(free[:stop_after])
    assert others[1] == reply  # in a batch, the stopped row is cut at its EOS; the padding after it is dropped

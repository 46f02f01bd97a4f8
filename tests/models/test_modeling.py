"""Native OpenELM: reference semantics, padding, cache, checkpointing, meta-device materialisation."""

import torch
import torch.nn.functional as F

from elmtune.models import OpenELMConfig, OpenELMForCausalLM


def _randomize_norms(model):
    # Norm weights start at one; make them matter so a misplaced norm cannot pass unnoticed.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.5 * torch.randn_like(param))


def test_logits_equal_reference_semantics(tiny_model, reference_forward):
    _randomize_norms(tiny_model)
    torch.manual_seed(1)
    ids = torch.randint(0, 32000, (23,))
    ours = tiny_model(ids[None]).logits[0]
    expected = reference_forward(tiny_model.state_dict(), tiny_model.config, ids)
    assert (ours - expected).abs().max() <= 1e-4


def test_reference_semantics_on_mha_and_wider_heads(reference_forward):
    config = OpenELMConfig(
        num_transformer_layers=2,
        model_dim=96,
        head_dim=32,
        num_gqa_groups=1,
        qkv_multipliers=[0.5, 1.0],
        ffn_multipliers=[1.0, 2.0],
        ffn_dim_divisor=32,
        normalize_qk_projections=True,
        share_input_output_layers=True,
        vocab_size=500,
    )
    torch.manual_seed(2)
    model = OpenELMForCausalLM(config).eval()
    _randomize_norms(model)
    ids = torch.randint(0, 500, (17,))
    assert (model(ids[None]).logits[0] - reference_forward(model.state_dict(), config, ids)).abs().max() <= 1e-4


def test_padded_rows_equal_rows_alone(tiny_model):
    torch.manual_seed(3)
    a, b = torch.randint(3, 32000, (12,)), torch.randint(3, 32000, (7,))
    alone_a, alone_b = tiny_model(a[None]).logits[0], tiny_model(b[None]).logits[0]
    for side in ("left", "right"):
        pad = torch.zeros(5, dtype=torch.long)
        row_b = torch.cat([pad, b]) if side == "left" else torch.cat([b, pad])
        mask_b = (torch.arange(12) >= 5) if side == "left" else (torch.arange(12) < 7)
        out = tiny_model(torch.stack([a, row_b]), attention_mask=torch.stack([torch.ones(12), mask_b]).long()).logits
        assert (out[0] - alone_a).abs().max() <= 1e-5
        got_b = out[1, 5:] if side == "left" else out[1, :7]
        assert (got_b - alone_b).abs().max() <= 1e-5


def test_block_diagonal_mask_and_restarted_positions_isolate_examples(tiny_model):
    torch.manual_seed(4)
    a, b = torch.randint(3, 32000, (6,)), torch.randint(3, 32000, (9,))
    packed = torch.cat([a, b])[None]
    seg = torch.tensor([0] * 6 + [1] * 9)
    causal = torch.tril(torch.ones(15, 15, dtype=torch.bool))
    mask = (causal & (seg[:, None] == seg[None, :]))[None, None]
    positions = torch.cat([torch.arange(6), torch.arange(9)])[None]
    out = tiny_model(packed, attention_mask=mask, position_ids=positions).logits[0]
    assert (out[:6] - tiny_model(a[None]).logits[0]).abs().max() <= 1e-5
    assert (out[6:] - tiny_model(b[None]).logits[0]).abs().max() <= 1e-5


def test_cached_greedy_generation_equals_uncached(tiny_model):
    torch.manual_seed(5)
    prompt = torch.randint(3, 32000, (2, 9))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0  # a left-padded row as well
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = tiny_model.generate(prompt, use_cache=True, **kwargs)
    uncached = tiny_model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert cached.shape == (2, 21)


def test_incremental_logits_equal_full_forward(tiny_model):
    torch.manual_seed(6)
    ids = torch.randint(3, 32000, (1, 14))
    full = tiny_model(ids).logits
    first = tiny_model(ids[:, :8], use_cache=True)
    chunk = tiny_model(ids[:, 8:11], past_key_values=first.past_key_values, use_cache=True)  # multi-token step
    last = tiny_model(ids[:, 11:12], past_key_values=chunk.past_key_values, use_cache=True)
    stepped = torch.cat([first.logits, chunk.logits, last.logits], dim=1)
    assert (stepped - full[:, :12]).abs().max() <= 1e-5


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(7)
    config = OpenELMConfig.from_preset("tiny")
    plain, ckpt = OpenELMForCausalLM(config), OpenELMForCausalLM(config)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable({"use_reentrant": False})
    ids = torch.randint(3, 32000, (2, 16))
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert ckpt.transformer.layers[0].gradient_checkpointing
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name


def test_loss_is_shifted_cross_entropy_with_ignore_index(tiny_model):
    ids = torch.randint(3, 32000, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    out = tiny_model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 32000), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, expected)
    summed = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, 32000), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert torch.allclose(tiny_model(ids, labels=labels, num_items_in_batch=7).loss, summed / 7)
    assert torch.allclose(tiny_model(ids, logits_to_keep=3).logits, out.logits[:, -3:], atol=1e-5)


def test_meta_device_materialisation_keeps_rope_and_causality(tiny_model):
    with torch.device("meta"):
        empty = OpenELMForCausalLM(tiny_model.config)
    empty = empty.to_empty(device="cpu")
    empty.load_state_dict(tiny_model.state_dict())
    ids = torch.randint(3, 32000, (1, 11))
    assert torch.equal(empty.eval()(ids).logits, tiny_model(ids).logits)


def test_untied_config_has_its_own_head():
    config = OpenELMConfig.from_preset("tiny", share_input_output_layers=False)
    model = OpenELMForCausalLM(config)
    assert "lm_head.weight" in model.state_dict()
    assert model.get_output_embeddings() is model.lm_head
    assert model.output_weight() is not model.transformer.token_embeddings.weight


def test_tied_head_is_the_embedding_as_transformers_declares_it(tiny_model):
    head = tiny_model.get_output_embeddings()
    assert isinstance(head, torch.nn.Linear) and head.weight is tiny_model.get_input_embeddings().weight
    assert tiny_model.config.tie_word_embeddings is True
    ids = torch.randint(3, 32000, (1, 6))
    hidden = tiny_model.transformer(ids).last_hidden_state
    torch.testing.assert_close(tiny_model(ids).logits, hidden @ tiny_model.transformer.token_embeddings.weight.T)
    tiny_model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(head.weight))  # broken on purpose
    tiny_model.tie_weights()
    assert tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight


def test_resize_token_embeddings_keeps_the_head_tied(tiny_model):
    old = tiny_model.get_input_embeddings().weight.detach().clone()  # (32000, d)
    tiny_model.resize_token_embeddings(32008, mean_resizing=False)
    embedding, head = tiny_model.get_input_embeddings(), tiny_model.get_output_embeddings()
    assert embedding.weight.shape == (32008, tiny_model.config.model_dim) and head.weight is embedding.weight
    assert tiny_model.config.vocab_size == 32008 and torch.equal(embedding.weight[:32000], old)
    logits = tiny_model(torch.tensor([[32005, 7, 8]])).logits
    assert logits.shape == (1, 3, 32008)
    tiny_model.resize_token_embeddings(31990)  # shrinking too
    assert tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight


def test_untied_head_resizes_with_the_embedding():
    model = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny", share_input_output_layers=False))
    model.resize_token_embeddings(32004, mean_resizing=False)
    assert model.get_output_embeddings().weight.shape == (32004, model.config.model_dim)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight

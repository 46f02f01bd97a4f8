"""Fixtures for model tests: a naive reference forward (the tiny model comes from ``tests/conftest.py``).

The reference is deliberately naive and written from the spec (sections 3-5): it works on a plain state_dict and a
config, with explicit loops over heads, a dense causal mask, a chain of small RMSNorm ops and repeat_interleave for
GQA; nothing is shared with elmtune's implementation.
"""

import math

import pytest
import torch


@pytest.fixture
def reference_forward():
    return forward


def rms_norm(x, weight, eps=1e-6):
    x32 = x.to(torch.float32)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def rope(x, positions, base=10000.0):
    # x: (heads, L, hd) in fp32; rotate-half over the full head_dim
    hd = x.shape[-1]
    inv_freq = [base ** (-2 * j / hd) for j in range(hd // 2)]
    inv = torch.tensor(inv_freq, dtype=torch.float64)
    angles = positions.to(torch.float64)[:, None] * inv[None, :]  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(torch.float32), angles.sin().to(torch.float32)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


def forward(state, config, ids):
    """Logits (L, vocab) of one unpadded sequence ``ids`` (L,)."""
    hd = config.head_dim
    x = state["transformer.token_embeddings.weight"][ids]
    length = ids.shape[0]
    positions = torch.arange(length)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    for i in range(config.num_transformer_layers):
        p = f"transformer.layers.{i}."
        n_q, n_kv = config.num_query_heads[i], config.num_kv_heads[i]
        h = rms_norm(x, state[p + "attn_norm.weight"])
        qkv = h @ state[p + "attn.qkv_proj.weight"].T
        heads = qkv.view(length, n_q + 2 * n_kv, hd).transpose(0, 1)
        q, k, v = heads[:n_q], heads[n_q : n_q + n_kv], heads[n_q + n_kv :]
        q = rms_norm(q, state[p + "attn.q_norm.weight"])
        k = rms_norm(k, state[p + "attn.k_norm.weight"])
        q, k = rope(q.float(), positions), rope(k.float(), positions)
        k = k.repeat_interleave(n_q // n_kv, dim=0)
        v = v.repeat_interleave(n_q // n_kv, dim=0)
        outs = []
        for head in range(n_q):
            scores = q[head] @ k[head].T / math.sqrt(hd)
            scores = scores.masked_fill(~causal, float("-inf"))
            outs.append(torch.softmax(scores, dim=-1) @ v[head])
        attn = torch.cat(outs, dim=-1)  # (L, n_q * hd), head-major like the weight columns
        x = x + attn @ state[p + "attn.out_proj.weight"].T
        h = rms_norm(x, state[p + "ffn_norm.weight"])
        up_gate = h @ state[p + "ffn.proj_1.weight"].T
        ffn = config.ffn_dims[i]
        gate, up = up_gate[:, :ffn], up_gate[:, ffn:]
        x = x + (torch.nn.functional.silu(gate) * up) @ state[p + "ffn.proj_2.weight"].T
    x = rms_norm(x, state["transformer.norm.weight"])
    return x @ state["transformer.token_embeddings.weight"].T

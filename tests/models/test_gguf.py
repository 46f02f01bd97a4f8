"""GGUF export: every tensor, metadata key and vocabulary entry read back with gguf's reader, checked against the
checkpoint, the config, SentencePiece and a GGUF-side forward pass written from llama.cpp's OpenELM graph."""

import json
import math
import shutil

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentencepiece import SentencePieceProcessor

from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_tokenizer
from elmtune.models import gguf as gguf_export
from elmtune.models.gguf import GGUFExportError, export_gguf, tensor_type
from elmtune.models.tokenizer import bundled_tokenizer_dir

Q = gguf.GGMLQuantizationType
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # llama.cpp's LLAMA_FTYPE values
LAYER_NAMES = ("attn_norm", "attn_qkv", "attn_q_norm", "attn_k_norm", "attn_output", "ffn_norm", "ffn_gate")
LAYER_NAMES += ("ffn_up", "ffn_down")


def randomize(model):
    """Give every parameter (norms too) distinct random values, so any mix-up of tensors shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(1 + 0.3 * torch.randn_like(param))
            else:
                param.copy_(0.05 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = randomize(OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")))
    model.save_pretrained(root / "fp32")
    model.to(torch.bfloat16).save_pretrained(root / "bf16-sharded", max_shard_size="1MB")
    return root


@pytest.fixture(scope="module")
def exported(checkpoints):
    """outtype -> (report, reader) for the fp32 checkpoint."""
    out = {}
    for outtype in FILE_TYPES:
        report = export_gguf(checkpoints / "fp32", checkpoints / f"tiny-{outtype}.gguf", outtype)
        out[outtype] = (report, gguf.GGUFReader(report.path))
    return out


def source_tensors(model_dir):
    """GGUF name -> float32 numpy array, written from the layout facts (gate = first half of proj_1)."""
    state = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        state |= {k: v.float().numpy() for k, v in load_file(path).items()}
    expected = {
        "token_embd.weight": state["transformer.token_embeddings.weight"],
        "output_norm.weight": state["transformer.norm.weight"],
    }
    layer = 0
    while f"transformer.layers.{layer}.attn_norm.weight" in state:
        p, b = f"transformer.layers.{layer}.", f"blk.{layer}."
        ffn = state[p + "ffn.proj_2.weight"].shape[1]
        expected |= {
            b + "attn_norm.weight": state[p + "attn_norm.weight"],
            b + "attn_qkv.weight": state[p + "attn.qkv_proj.weight"],
            b + "attn_q_norm.weight": state[p + "attn.q_norm.weight"],
            b + "attn_k_norm.weight": state[p + "attn.k_norm.weight"],
            b + "attn_output.weight": state[p + "attn.out_proj.weight"],
            b + "ffn_norm.weight": state[p + "ffn_norm.weight"],
            b + "ffn_gate.weight": state[p + "ffn.proj_1.weight"][:ffn],
            b + "ffn_up.weight": state[p + "ffn.proj_1.weight"][ffn:],
            b + "ffn_down.weight": state[p + "ffn.proj_2.weight"],
        }
        layer += 1
    return expected


def values(tensor):
    """Float32 values of a GGUF tensor in numpy (rows, cols) order."""
    return gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(tuple(reversed(tensor.shape)))


def field(reader, key):
    return reader.get_field(key).contents()


def test_tensor_names_shapes_and_no_output_head(exported, checkpoints):
    _, reader = exported["f32"]
    source = source_tensors(checkpoints / "fp32")
    names = [t.name for t in reader.tensors]
    expected = {"token_embd.weight", "output_norm.weight"}
    expected |= {f"blk.{i}.{n}.weight" for i in range(4) for n in LAYER_NAMES}
    assert set(names) == expected and len(names) == len(expected) == 38
    assert "output.weight" not in names  # llama.cpp's OpenELM reuses token_embd as the output head
    for tensor in reader.tensors:
        assert tuple(reversed(tensor.shape.tolist())) == source[tensor.name].shape, tensor.name  # GGUF: ne0 first
    qkv = {t.name: t for t in reader.tensors}["blk.3.attn_qkv.weight"]
    assert qkv.shape.tolist() == [128, (8 + 2 * 4) * 16]  # {n_embd, (n_head + 2 n_head_kv) * head_dim}


def test_f32_export_is_exact(exported, checkpoints):
    _, reader = exported["f32"]
    source = source_tensors(checkpoints / "fp32")
    for tensor in reader.tensors:
        assert tensor.tensor_type == Q.F32
        np.testing.assert_array_equal(values(tensor), source[tensor.name], err_msg=tensor.name)


@pytest.mark.parametrize(
    ("outtype", "qtype", "torch_dtype"), [("f16", Q.F16, torch.float16), ("bf16", Q.BF16, torch.bfloat16)]
)
def test_half_precision_rounds_once_to_nearest_even(exported, checkpoints, outtype, qtype, torch_dtype):
    _, reader = exported[outtype]
    source = source_tensors(checkpoints / "fp32")
    for tensor in reader.tensors:
        expected = source[tensor.name]
        if expected.ndim == 1:  # norms stay f32, exactly
            assert tensor.tensor_type == Q.F32
            np.testing.assert_array_equal(values(tensor), expected, err_msg=tensor.name)
            continue
        assert tensor.tensor_type == qtype, tensor.name
        rounded = torch.from_numpy(expected).to(torch_dtype).float().numpy()  # torch's round-to-nearest-even
        np.testing.assert_array_equal(values(tensor), rounded, err_msg=tensor.name)


def test_q8_0_within_its_error_bound(exported, checkpoints):
    _, reader = exported["q8_0"]
    source = source_tensors(checkpoints / "fp32")
    for tensor in reader.tensors:
        expected = source[tensor.name]
        if expected.ndim == 1:
            assert tensor.tensor_type == Q.F32
            np.testing.assert_array_equal(values(tensor), expected)
            continue
        assert tensor.tensor_type == Q.Q8_0, tensor.name
        blocks = expected.reshape(-1, 32)  # Q8_0: blocks of 32 along a row, one fp16 scale d = amax / 127 each
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127
        # rounding to the grid costs d/2; storing d in fp16 (relative error <= 2^-11) costs up to 127 * d * 2^-11
        bound = d * (0.5 + 127 * 2.0**-11) + 1e-12
        error = np.abs(values(tensor).reshape(-1, 32) - blocks)
        assert (error <= bound).all(), tensor.name
        assert error.max() > 0  # it really is quantized


def test_metadata_matches_the_config(exported, checkpoints):
    config = json.loads((checkpoints / "fp32" / "config.json").read_text())
    source = source_tensors(checkpoints / "fp32")
    for outtype, (_, reader) in exported.items():
        assert field(reader, "general.architecture") == "openelm"
        assert field(reader, "general.type") == "model"
        assert field(reader, "general.file_type") == FILE_TYPES[outtype]
        assert field(reader, "general.quantization_version") == 2
        assert field(reader, "general.name") == "Fp32"  # from the directory name, as llama.cpp's converter does
        assert field(reader, "openelm.block_count") == config["num_transformer_layers"] == 4
        assert field(reader, "openelm.context_length") == config["max_context_length"] == 2048
        assert field(reader, "openelm.embedding_length") == config["model_dim"] == 128
        assert field(reader, "openelm.attention.head_count") == config["num_query_heads"] == [4, 6, 6, 8]
        assert field(reader, "openelm.attention.head_count_kv") == config["num_kv_heads"] == [2, 3, 3, 4]
        ffn_from_weights = [source[f"blk.{i}.ffn_down.weight"].shape[1] for i in range(4)]
        assert field(reader, "openelm.feed_forward_length") == ffn_from_weights == [64, 224, 352, 512]
        assert field(reader, "openelm.rope.freq_base") == 10000.0
        assert field(reader, "openelm.rope.dimension_count") == config["head_dim"] == 16
        assert field(reader, "openelm.attention.key_length") == field(reader, "openelm.attention.value_length") == 16
        assert field(reader, "openelm.attention.layer_norm_rms_epsilon") == np.float32(1e-6)
        arrays = ("openelm.attention.head_count", "openelm.attention.head_count_kv", "openelm.feed_forward_length")
        for key in arrays:
            assert reader.get_field(key).types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]


def test_vocabulary_is_the_sentencepiece_model(exported):
    _, reader = exported["q8_0"]
    sp = SentencePieceProcessor(model_file=str(bundled_tokenizer_dir() / "tokenizer.model"))
    assert field(reader, "tokenizer.ggml.model") == "llama" and field(reader, "tokenizer.ggml.pre") == "default"
    tokens = field(reader, "tokenizer.ggml.tokens")
    scores = field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(scores) == len(types) == sp.vocab_size() == 32000
    assert tokens == [sp.id_to_piece(i) for i in range(32000)]
    np.testing.assert_array_equal(np.float32(scores), np.float32([sp.get_score(i) for i in range(32000)]))
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and types[:4] == [2, 3, 3, 6]  # unknown, control, byte
    the = sp.piece_to_id("▁the")
    assert tokens[the] == "▁the" and types[the] == 1 and scores[the] == sp.get_score(the) < 0
    assert sum(t == 6 for t in types) == 256  # the byte-fallback pieces
    hf = load_tokenizer()
    assert field(reader, "tokenizer.ggml.bos_token_id") == hf.bos_token_id == 1
    assert field(reader, "tokenizer.ggml.eos_token_id") == hf.eos_token_id == 2
    assert field(reader, "tokenizer.ggml.unknown_token_id") == hf.unk_token_id == 0
    assert field(reader, "tokenizer.ggml.padding_token_id") == hf.pad_token_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is (hf("x")["input_ids"][0] == hf.bos_token_id) is True
    assert field(reader, "tokenizer.ggml.add_eos_token") is (hf("x")["input_ids"][-1] == hf.eos_token_id) is False


def test_bf16_sharded_checkpoint_streams_losslessly(checkpoints, tmp_path):
    source = source_tensors(checkpoints / "bf16-sharded")
    assert len(list((checkpoints / "bf16-sharded").glob("model-*.safetensors"))) > 1
    report = export_gguf(checkpoints / "bf16-sharded", tmp_path / "bf16.gguf", "bf16", name="OpenELM tiny")
    reader = gguf.GGUFReader(report.path)
    assert field(reader, "general.name") == "OpenELM tiny"
    assert len(reader.tensors) == 38
    for tensor in reader.tensors:  # bf16 -> bf16 keeps every bit; norms are exact in f32
        np.testing.assert_array_equal(values(tensor), source[tensor.name], err_msg=tensor.name)


def test_gguf_forward_matches_the_model(exported, checkpoints, reference_forward):
    """Run llama.cpp's OpenELM graph (as its source builds it) on the GGUF alone; logits must equal ours."""
    _, reader = exported["f32"]
    w = {t.name: torch.from_numpy(values(t).copy()) for t in reader.tensors}
    n_head, n_kv = field(reader, "openelm.attention.head_count"), field(reader, "openelm.attention.head_count_kv")
    hd, eps = field(reader, "openelm.attention.key_length"), field(reader, "openelm.attention.layer_norm_rms_epsilon")
    n_rot, base = field(reader, "openelm.rope.dimension_count"), field(reader, "openelm.rope.freq_base")
    ids = torch.tensor([1, 450, 7483, 310, 3444, 338, 3681, 29889])
    length = len(ids)
    inv = base ** (-torch.arange(0, n_rot, 2, dtype=torch.float64) / n_rot)
    ang = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]  # (L, n_rot/2), NEOX: pairs (j, j + n_rot/2)
    cos, sin = ang.cos().float(), ang.sin().float()

    def norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(x):  # (L, heads, hd)
        a, b = x[..., : n_rot // 2], x[..., n_rot // 2 : n_rot]
        c, s = cos[:, None], sin[:, None]
        return torch.cat([a * c - b * s, b * c + a * s, x[..., n_rot:]], dim=-1)

    x = w["token_embd.weight"][ids]
    for i in range(field(reader, "openelm.block_count")):
        blk = f"blk.{i}."
        qkv = (norm(x, w[blk + "attn_norm.weight"]) @ w[blk + "attn_qkv.weight"].T).view(length, -1, hd)
        q, k, v = qkv[:, : n_head[i]], qkv[:, n_head[i] : n_head[i] + n_kv[i]], qkv[:, n_head[i] + n_kv[i] :]
        q, k = rope(norm(q, w[blk + "attn_q_norm.weight"])), rope(norm(k, w[blk + "attn_k_norm.weight"]))
        group = n_head[i] // n_kv[i]  # query head h reads kv head h // group
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(length, -1)
        x = x + attn @ w[blk + "attn_output.weight"].T
        h = norm(x, w[blk + "ffn_norm.weight"])
        gate, up = h @ w[blk + "ffn_gate.weight"].T, h @ w[blk + "ffn_up.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[blk + "ffn_down.weight"].T
    logits = norm(x, w["output_norm.weight"]) @ w["token_embd.weight"].T  # tied head
    config = OpenELMConfig.from_pretrained(checkpoints / "fp32")
    state = {k: v.float() for k, v in load_file(checkpoints / "fp32" / "model.safetensors").items()}
    expected = reference_forward(state, config, ids)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    model = OpenELMForCausalLM.from_pretrained(checkpoints / "fp32").eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids[None]).logits[0], atol=1e-4, rtol=1e-4)


def test_model_dir_tokenizer_and_added_tokens_are_used(checkpoints, tmp_path):
    model_dir = tmp_path / "with-tokenizer"
    shutil.copytree(checkpoints / "fp32", model_dir)
    shutil.copy(bundled_tokenizer_dir() / "tokenizer.model", model_dir / "tokenizer.model")
    (model_dir / "added_tokens.json").write_text(json.dumps({"<tool>": 31999}))
    decoder = {"31998": {"content": "<|im_end|>", "special": True}, "31997": {"content": "▁hi", "special": False}}
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps({"add_bos_token": False, "added_tokens_decoder": decoder})
    )
    report = export_gguf(model_dir, tmp_path / "t.gguf", "f16")
    assert report.tokenizer == model_dir / "tokenizer.model"
    reader = gguf.GGUFReader(report.path)
    tokens, scores = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")
    assert (tokens[31999], types[31999], scores[31999]) == ("<tool>", 4, -1000.0)  # user-defined
    assert (tokens[31998], types[31998], scores[31998]) == ("<|im_end|>", 3, -1000.0)  # control
    assert (tokens[31997], types[31997]) == (" hi", 4)  # word-boundary mark becomes a space
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


def test_tensor_type_rules():
    assert tensor_type("blk.0.attn_q_norm.weight", (16,), Q.Q8_0) == Q.F32
    assert tensor_type("output_norm.weight", (128,), Q.F16) == Q.F32
    assert tensor_type("blk.0.attn_qkv.weight", (128, 64), Q.Q8_0) == Q.Q8_0
    assert tensor_type("blk.0.attn_output.weight", (128, 48), Q.Q8_0) == Q.F16  # 48 columns: not whole blocks
    assert tensor_type("blk.0.attn_output.weight", (128, 48), Q.BF16) == Q.BF16


@pytest.fixture
def broken(checkpoints, tmp_path):
    """A copy of the fp32 checkpoint to damage."""
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoints / "fp32", target)
    return target


def edit_config(model_dir, **changes):
    path = model_dir / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def edit_weights(model_dir, fn):
    path = model_dir / "model.safetensors"
    weights = load_file(path)
    fn(weights)
    save_file(weights, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), "is not a directory"),
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: edit_config(d, model_type="llama"), "only OpenELM"),
        (lambda d: edit_config(d, share_input_output_layers=False), "untied output head"),
        (lambda d: edit_config(d, normalize_qk_projections=False), "q/k norms"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda d: edit_weights(d, lambda w: w.pop("transformer.layers.2.ffn.proj_2.weight")), "lacks 1 tensor"),
        (lambda d: edit_weights(d, lambda w: w.update({"lm_head.weight": torch.zeros(32000, 128)})), "untied output"),
        (lambda d: edit_config(d, num_query_heads=[4, 6, 6, 6]), "not a valid OpenELM config"),
        (
            lambda d: edit_config(d, num_query_heads=[4, 6, 6, 4], num_kv_heads=[2, 3, 3, 2]),
            "layers.3.attn.qkv_proj.weight has shape [256, 128], but config.json implies [128, 128]",
        ),
    ],
)
def test_unexportable_checkpoints_fail_clearly(broken, tmp_path, damage, message):
    damage(broken)
    out = tmp_path / "out.gguf"
    with pytest.raises(GGUFExportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        export_gguf(broken, out, "f16")
    assert not out.exists()


def test_unknown_outtype(checkpoints, tmp_path):
    with pytest.raises(GGUFExportError, match="q4_k"):
        export_gguf(checkpoints / "fp32", tmp_path / "x.gguf", "q4_k")


def test_failure_midway_leaves_no_file(checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous file")
    calls = []

    def failing_encode(handle, plan):
        calls.append(plan.name)
        if len(calls) == 5:
            raise OSError("disk full")
        return real_encode(handle, plan)

    real_encode = gguf_export._encode
    monkeypatch.setattr(gguf_export, "_encode", failing_encode)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(checkpoints / "fp32", out, "f32")
    assert out.read_bytes() == b"previous file"  # untouched: the new file is written under a temporary name
    assert list(tmp_path.iterdir()) == [out]

"""The bundled Llama-2 tokenizer and the padding convention."""

import pytest

from elmtune.models import PAD_TOKEN_ID, load_tokenizer
from elmtune.models.tokenizer import bundled_tokenizer_dir


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world, the quick brown fox.", [1, 15043, 3186, 29892, 278, 4996, 17354, 1701, 29916, 29889]),
        ("", [1]),
        ("</s>", [1, 2]),  # the EOS text maps to the EOS id, as the chat template relies on
        (" x", [1, 29871, 921]),  # SentencePiece keeps a leading space as its own piece
    ],
)
def test_fixed_strings(tokenizer, text, ids):
    assert tokenizer(text).input_ids == ids


def test_fast_tokenizer_matches_sentencepiece(tokenizer):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(bundled_tokenizer_dir() / "tokenizer.model"))
    texts = (
        "Answer format: true/false",
        "  leading spaces\n\nand\ttabs",
        "naïve café 東京 🙂",
        "a\u00a0b",
        " x",
        "\n y",
    )
    for text in texts:
        assert tokenizer(text).input_ids == [1, *sp.encode(text)], text


def test_special_ids_and_padding(tokenizer):
    assert len(tokenizer) == 32000
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert tokenizer.pad_token_id == PAD_TOKEN_ID == 0
    assert tokenizer.decode([1, 15043, 3186, 2], skip_special_tokens=True) == "Hello world"
    batch = tokenizer(["a b c d", "a"], padding=True)
    assert batch.input_ids[1][-1] == 0 and batch.attention_mask[1][-1] == 0  # right padding, masked


def test_bundled_files_and_notice_ship_with_package():
    folder = bundled_tokenizer_dir()
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "NOTICE"):
        assert (folder / name).is_file(), name
    assert "LLAMA 2 Community License" in (folder / "NOTICE").read_text()


def test_checkpoint_dirs_without_tokenizer_and_presets_use_the_bundled_one(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for source in (tmp_path, "270M", "apple/OpenELM-270M-Instruct"):
        assert load_tokenizer(source)("Hello").input_ids == [1, 15043]

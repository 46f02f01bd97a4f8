"""Tokenizer directories carry the chat template: ``apply_chat_template`` renders exactly the ``chat`` training
format, from the bundled tokenizer, from a merged directory and from the GGUF file exported from it."""

import json
import shutil

import gguf
import pytest
from transformers import AutoTokenizer

from elmtune.datasets import ChatExample, Message
from elmtune.datasets.templates import OPENELM_INSTRUCT_CHAT_TEMPLATE, render_sft
from elmtune.merging import merge_to_directory
from elmtune.merging.merged_checkpoint import copy_tokenizer
from elmtune.models.gguf import export_gguf
from elmtune.models.tokenizer import bundled_tokenizer_dir

CONVERSATIONS = [
    [Message("user", "Hi.")],
    [Message("system", "Be brief."), Message("user", "Hi.")],
    [Message("user", "Hi."), Message("assistant", "Hello!"), Message("user", "Name a colour.")],
    [Message("system", "Be brief."), Message("user", "a"), Message("assistant", "b"), Message("user", "c")],
]


def _as_dicts(messages):
    return [{"role": m.role, "content": m.content} for m in messages]


def assert_renders_training_format(tokenizer):
    for turns in CONVERSATIONS:
        trained = render_sft(ChatExample((*turns, Message("assistant", "Reply."))), "chat").text
        full = _as_dicts([*turns, Message("assistant", "Reply.")])
        assert tokenizer.apply_chat_template(full, tokenize=False) == trained
        prompt = tokenizer.apply_chat_template(_as_dicts(turns), tokenize=False, add_generation_prompt=True)
        assert prompt + "Reply.</s>\n" == trained
        assert tokenizer.apply_chat_template(_as_dicts(turns), tokenize=False) + "<|assistant|>\n" == prompt
        # Tokenised by transformers: the training ids without BOS (training adds BOS to the rendered text).
        ids = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"]
        assert [tokenizer.bos_token_id, *ids] == tokenizer(trained)["input_ids"]


def test_bundled_tokenizer_config_carries_apples_template():
    config = json.loads((bundled_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == OPENELM_INSTRUCT_CHAT_TEMPLATE


def test_bundled_tokenizer_renders_the_training_format(tokenizer):
    assert_renders_training_format(tokenizer)
    assert_renders_training_format(AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir())))


@pytest.fixture(scope="module")
def merged(tmp_path_factory, trained_adapter):
    root = tmp_path_factory.mktemp("template")
    adapter = trained_adapter("tiny", root / "adapter")
    return merge_to_directory("tiny", adapter, root / "merged").path


def test_merged_directory_renders_the_training_format(merged):
    config = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == OPENELM_INSTRUCT_CHAT_TEMPLATE
    assert_renders_training_format(AutoTokenizer.from_pretrained(str(merged)))


def test_gguf_carries_the_chat_template(merged, tmp_path):
    report = export_gguf(merged, tmp_path / "tiny.gguf", "f32")
    reader = gguf.GGUFReader(report.path)
    assert reader.get_field("tokenizer.chat_template").contents() == OPENELM_INSTRUCT_CHAT_TEMPLATE


def _tokenizer_copy(directory, template):
    """The bundled tokenizer files in ``directory``, with ``template`` as chat template (None: no template)."""
    directory.mkdir()
    for name in ("tokenizer.json", "tokenizer.model", "special_tokens_map.json"):
        shutil.copyfile(bundled_tokenizer_dir() / name, directory / name)
    config = json.loads((bundled_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template")
    if template is not None:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_a_copied_tokenizer_without_template_gets_ours_and_one_with_a_template_keeps_it(tmp_path):
    (tmp_path / "merged").mkdir()
    copy_tokenizer(tmp_path / "merged", _tokenizer_copy(tmp_path / "plain", None))
    assert_renders_training_format(AutoTokenizer.from_pretrained(str(tmp_path / "merged")))
    (tmp_path / "merged-own").mkdir()
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    copy_tokenizer(tmp_path / "merged-own", _tokenizer_copy(tmp_path / "own", own))
    config = json.loads((tmp_path / "merged-own" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == own

"""``elmtune generate`` and ``elmtune chat`` on the tiny preset: replies on stdout, batch files, the conversation
kept across turns, and user mistakes as one-line errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from elmtune.cli.app import app
from elmtune.datasets import Message
from elmtune.inference import ModelSource, Prompt, encode_prompt, load_for_generation
from elmtune.inference import chat as chat_module

runner = CliRunner()


@pytest.fixture(scope="module")
def loaded():
    return load_for_generation(ModelSource("tiny", device="cpu"))


def greedy_text(model, tokenizer, prompt: Prompt, max_new_tokens: int) -> str:
    """Greedy decoding by full forwards (no cache), decoded without special tokens."""
    ids, new = encode_prompt(tokenizer, prompt.render(tokenizer)), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    return tokenizer.decode(new, skip_special_tokens=True)


def test_generate_prints_the_greedy_reply(loaded):
    result = runner.invoke(
        app, ["generate", "tiny", "--prompt", "Hello there", "--system", "Be brief.", "--max-new-tokens", "9"]
    )
    assert result.exit_code == 0, result.output
    expected = greedy_text(*loaded, Prompt.from_text("Hello there", system="Be brief."), 9)
    assert result.stdout == expected + "\n"
    raw = runner.invoke(app, ["generate", "tiny", "-p", "Once upon a time", "--raw", "--max-new-tokens", "5"])
    assert raw.stdout == greedy_text(*loaded, Prompt(raw_text="Once upon a time"), 5) + "\n"


def test_seeded_sampling_from_the_command_line_is_reproducible():
    args = ["generate", "tiny", "-p", "Hi", "--max-new-tokens", "8", "--temperature", "1.0", "--top-p", "0.9"]
    first = runner.invoke(app, [*args, "--seed", "5"])
    again = runner.invoke(app, [*args, "--seed", "5"])
    greedy = runner.invoke(app, ["generate", "tiny", "-p", "Hi", "--max-new-tokens", "8"])
    assert first.exit_code == again.exit_code == 0, first.output
    assert first.stdout == again.stdout != greedy.stdout


def test_batch_mode_writes_each_row_with_its_reply(loaded, tmp_path):
    rows = [{"id": "a", "prompt": "Hi"}, {"id": "b", "messages": [{"role": "user", "content": "Yo"}], "n": 2}]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "replies.jsonl"
    args = ["generate", "tiny", "--input", str(source), "--output", str(out), "--max-new-tokens", "6"]
    result = runner.invoke(app, [*args, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    replies = [greedy_text(*loaded, Prompt.from_text(text), 6) for text in ("Hi", "Yo")]
    assert written == [{**rows[0], "reply": replies[0]}, {**rows[1], "reply": replies[1]}]
    assert f"wrote 2 replies to {out}" in result.stderr
    again = runner.invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0 and [json.loads(line) for line in out.read_text().splitlines()] == written


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["generate", "no/such/dir", "-p", "hi"], 1, "model 'no/such/dir' does not exist"),
        (["generate", "tiny", "-p", "hi", "--top-p", "0.5"], 2, "generation.top_p needs sampling"),
        (["generate", "tiny"], 2, "give either --prompt TEXT or --input"),
        (["generate", "tiny", "-p", "hi", "--raw", "--system", "s"], 2, "--system needs the chat format"),
        (["chat", "tiny", "--seed", "3"], 2, "(flag --seed)"),
        (["generate", "tiny", "-p", "hi", "--dtype", "fp64"], 2, "--dtype: unknown dtype 'fp64'"),
    ],
)
def test_mistakes_are_one_line_errors(args, code, message, monkeypatch, capsys, run_main):
    exit_code, line = run_main(args)
    assert exit_code == code and message in line


def test_batch_file_mistakes_are_one_line_errors(tmp_path, monkeypatch, capsys, run_main):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "Hi"}\n{"prompt": ["not", "text"]}\n', encoding="utf-8")
    out = tmp_path / "replies.jsonl"
    code, line = run_main(["generate", "tiny", "-i", str(source), "-o", str(out)])
    assert code == 1 and line == f"error: {source}, line 2: 'prompt' must be a string"
    assert not out.exists()
    missing = tmp_path / "missing.jsonl"
    code, line = run_main(["generate", "tiny", "-i", str(missing), "-o", str(out)])
    assert code == 1 and line == f"error: {missing}: no such file or directory"
    out.write_text("old\n", encoding="utf-8")
    source.write_text('{"prompt": "Hi"}\n', encoding="utf-8")
    code, line = run_main(["generate", "tiny", "-i", str(source), "-o", str(out)])
    assert code == 1 and "exists; pass --overwrite" in line and out.read_text() == "old\n"


@pytest.fixture
def prompts_seen(monkeypatch):
    """Every prompt the chat generates from, recorded on the way to the real generation."""
    seen: list[Prompt] = []
    real = chat_module.generate_reply

    def recording(model, tokenizer, prompt, settings, on_text=None):
        seen.append(prompt)
        return real(model, tokenizer, prompt, settings, on_text)

    monkeypatch.setattr(chat_module, "generate_reply", recording)
    return seen


def test_chat_keeps_the_conversation(loaded, prompts_seen):
    result = runner.invoke(app, ["chat", "tiny", "--max-new-tokens", "5"], input="Hi!\nAnd then?\n/exit\n")
    assert result.exit_code == 0, result.output
    first_reply = greedy_text(*loaded, Prompt.from_text("Hi!"), 5)
    assert [p.messages for p in prompts_seen] == [
        (Message("user", "Hi!"),),
        (Message("user", "Hi!"), Message("assistant", first_reply), Message("user", "And then?")),
    ]
    assert f"assistant> {first_reply}\n" in result.stdout and result.stdout.count("assistant> ") == 2


def test_chat_reset_and_end_of_input(prompts_seen):
    result = runner.invoke(
        app, ["chat", "tiny", "--system", "Be brief.", "--max-new-tokens", "3"], input="a\n/reset\nb\n"
    )
    assert result.exit_code == 0, result.output  # end of input ends the chat like /exit
    system = Message("system", "Be brief.")
    assert [p.messages for p in prompts_seen] == [(system, Message("user", "a")), (system, Message("user", "b"))]
    assert "(new conversation)" in result.stdout


def test_batch_and_adapter_mistakes_are_one_line_errors(tmp_path, run_main):
    source, out = tmp_path / "prompts.jsonl", tmp_path / "replies.jsonl"
    source.write_text('{"prompt": "Hi"}\n', encoding="utf-8")
    code, line = run_main(["generate", "tiny", "-i", str(source)])
    assert (code, line) == (2, "error: --input and --output go together: prompts in, replies out")
    code, line = run_main(["generate", "tiny", "-i", str(source), "-o", str(out), "--batch-size", "0"])
    assert (code, line) == (2, "error: --batch-size must be at least 1, not 0")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    code, line = run_main(["generate", "tiny", "-i", str(empty), "-o", str(out)])
    assert (code, line) == (1, f"error: {empty}: no prompts (the file is empty)")
    code, line = run_main(["generate", "tiny", "-p", "hi", "--adapter", str(tmp_path / "no-adapter")])
    assert (code, line) == (1, f"error: adapter directory {tmp_path / 'no-adapter'} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "prompts.jsonl"]  # nothing written

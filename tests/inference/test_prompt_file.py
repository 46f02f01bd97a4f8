"""Batch mode: rows checked before any work, replies in input order with every input field kept."""

import json

import pytest

from elmtune.datasets import DataRowError, Message
from elmtune.inference import DecodingSettings, GenerationRequest, ModelSource, Prompt, generate_reply, run_generate
from elmtune.inference.prompt_file import read_prompt_rows
from elmtune.output_paths import OutputExistsError

ROWS = [
    {"id": 1, "prompt": "Hello there, who are you?"},
    {"id": 2, "prompt": "Hi", "system": "Be brief.", "tags": ["x"]},
    {
        "id": 3,
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    },  # fmt: skip
    {"id": 4, "prompt": "Name three colours and say which one is the warmest."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_rows_become_prompts(tmp_path):
    rows = read_prompt_rows(write_jsonl(tmp_path / "in.jsonl", ROWS), system="Default.")
    assert rows[0].prompt == Prompt((Message("system", "Default."), Message("user", ROWS[0]["prompt"])))
    assert rows[1].prompt == Prompt.from_text("Hi", system="Be brief.")  # the row's own system turn wins
    assert rows[2].prompt.messages[0] == Message("system", "Default.") and len(rows[2].prompt.messages) == 4
    assert rows[3].where.endswith("in.jsonl, line 4")
    raw = read_prompt_rows(write_jsonl(tmp_path / "raw.jsonl", [ROWS[0]]), raw=True)
    assert raw[0].prompt == Prompt(raw_text=ROWS[0]["prompt"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "x"}', "exactly one of 'prompt'"),
        ('{"prompt": "x", "messages": []}', "exactly one of 'prompt'"),
        ('{"prompt": 3}', "'prompt' must be a string"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "user turn"),
        ('{"messages": [{"role": "robot", "content": "a"}]}', "role must be one of"),
        ('{"messages": [{"role": "user"}]}', "exactly 'role' and 'content'"),
        ('{"prompt": "x", "reply": "y"}', "already has a 'reply'"),
    ],
)
def test_a_bad_row_is_one_line_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataRowError, match=message) as err:
        read_prompt_rows(path)
    assert str(err.value).startswith(f"{path}, line 3: ") and "\n" not in str(err.value)


def test_batch_run_writes_replies_in_order_with_the_input_fields(tmp_path, loaded):
    model, tokenizer = loaded
    source = write_jsonl(tmp_path / "in.jsonl", ROWS)
    settings = DecodingSettings(max_new_tokens=8)
    request = GenerationRequest(
        ModelSource("tiny", device="cpu"), settings, input=source, output=tmp_path / "out.jsonl"
    )
    progress: list[tuple[int, int]] = []
    result = run_generate(request, on_progress=lambda done, total: progress.append((done, total)))
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = [generate_reply(model, tokenizer, row.prompt, settings).text for row in read_prompt_rows(source)]
    assert written == [{**row, "reply": reply} for row, reply in zip(ROWS, expected, strict=True)]
    assert [r.text for r in result.replies] == expected and result.output == tmp_path / "out.jsonl"
    assert progress[-1] == (4, 4)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_generate(request)
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"prompt": 1}])
    with pytest.raises(DataRowError, match="bad.jsonl, line 2"):
        run_generate(GenerationRequest(request.source, input=bad, output=tmp_path / "new.jsonl"))
    assert not (tmp_path / "new.jsonl").exists()

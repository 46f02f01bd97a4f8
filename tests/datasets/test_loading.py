"""Loading: every source type gives the same typed examples; every bad row is named with file, row and reason."""

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elmtune.datasets import (
    ChatExample,
    CompletionExample,
    DataRowError,
    DataSourceError,
    InstructionExample,
    Message,
    TextExample,
    detect_source_format,
    load_preference_examples,
    load_sft_examples,
)
from elmtune.errors import ElmtuneError

ROWS = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi, in French.", "input": "", "output": 'Bonjour, "ami"\nça va?'},
]


def _write(path, rows, kind):
    if kind == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind == "csv":
        import csv

        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_real_commonsense_sample_loads_field_for_field(data_dir):
    path = data_dir / "commonsense_train_sample200.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    examples, report = load_sft_examples(path)
    assert report.format == "commonsense" and report.rows == 200 and report.invalid == 0
    assert all(isinstance(e, InstructionExample) for e in examples)
    assert [(e.instruction, e.input, e.output, e.answer) for e in examples] == [
        (r["instruction"], r["input"], r["output"], r["answer"]) for r in raw
    ]
    assert examples[7].where == f"{path}, row 8"


def test_real_alpaca_and_chat_samples_detected(data_dir):
    alpaca, report = load_sft_examples(data_dir / "alpaca_en_demo_first200.json")
    assert report.format == "alpaca" and len(alpaca) == 200 and alpaca[0].answer is None
    chats, report = load_sft_examples(data_dir / "chat_multiturn_sample.jsonl")
    assert report.format == "messages" and len(chats) == 30
    raw = json.loads((data_dir / "chat_multiturn_sample.jsonl").read_text(encoding="utf-8").splitlines()[3])
    assert chats[3].messages == tuple(Message(m["role"], m["content"]) for m in raw["messages"])
    assert chats[3].where.endswith("chat_multiturn_sample.jsonl, line 4")


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "parquet"])
def test_every_file_type_gives_the_same_examples(tmp_path, kind):
    path = _write(tmp_path / f"data.{kind}", ROWS, kind)
    examples, report = load_sft_examples(path)
    assert report.format == "alpaca"
    assert [(e.instruction, e.input, e.output) for e in examples] == [
        (r["instruction"], r["input"], r["output"]) for r in ROWS
    ]


def test_saved_dataset_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    examples, _ = load_sft_examples(tmp_path / "ds")
    assert [e.output for e in examples] == [r["output"] for r in ROWS]


def test_other_formats(tmp_path):
    rows = [{"prompt": "2+2=", "completion": "4"}]
    (ex,), report = load_sft_examples(_write(tmp_path / "pc.jsonl", rows, "jsonl"))
    assert report.format == "prompt_completion" and ex == CompletionExample("2+2=", "4", ex.where)
    (ex,), report = load_sft_examples(_write(tmp_path / "t.jsonl", [{"text": "Once upon a time."}], "jsonl"))
    assert report.format == "text" and ex == TextExample("Once upon a time.", ex.where)
    chat = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        }
    ]
    (ex,), _ = load_sft_examples(_write(tmp_path / "c.jsonl", chat, "jsonl"))
    assert isinstance(ex, ChatExample) and [m.role for m in ex.messages] == ["system", "user", "assistant"]


BAD_ROWS = [
    ({"instruction": "x"}, "alpaca", "field 'output' is missing"),
    ({"instruction": "x", "output": 5}, "alpaca", "field 'output' must be a string, got int"),
    ({"instruction": "x", "output": "   "}, "alpaca", "field 'output' is empty"),
    ({"instruction": None, "output": "y"}, "alpaca", "field 'instruction' is missing"),
    ({"instruction": "x", "input": ["a"], "output": "y"}, "alpaca", "field 'input' must be a string, got list"),
    ({"instruction": "x", "output": "y", "input": ""}, "commonsense", "field 'answer' is missing"),
    ({"messages": "hi"}, "messages", "field 'messages' must be a list of messages, got str"),
    ({"messages": []}, "messages", "field 'messages' is an empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages", "messages[0] has role 'bot'"),
    ({"messages": [{"role": "user"}]}, "messages", "messages[0] has no 'content'"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        "messages",
        "messages[1].content is empty",
    ),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages", "no assistant turn"),
    (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ]
        },
        "messages",
        "system turn after the first position",
    ),
    ({"prompt": "p", "completion": ""}, "prompt_completion", "field 'completion' is empty"),
    ({"text": 3.5}, "text", "field 'text' must be a string, got float"),
    (["not", "an", "object"], "alpaca", "expected an object with named fields, got list"),
]


@pytest.mark.parametrize(("row", "data_format", "reason"), BAD_ROWS)
def test_bad_row_names_file_line_and_problem(tmp_path, row, data_format, reason):
    good = {
        "alpaca": ROWS[0],
        "commonsense": {**ROWS[0], "answer": "a"},
        "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "prompt_completion": {"prompt": "p", "completion": "c"},
        "text": {"text": "t"},
    }[data_format]
    path = _write(tmp_path / "bad.jsonl", [good, good, row, good], "jsonl")
    with pytest.raises(DataRowError) as info:
        load_sft_examples(path, data_format)
    message = str(info.value)
    assert message.startswith(f"{path}, line 3: ") and reason in message
    assert "\n" not in message and isinstance(info.value, ElmtuneError)

    examples, report = load_sft_examples(path, data_format, skip_invalid=True)
    assert len(examples) == 3 and report.invalid == 1 and report.rows == 4
    assert report.errors == (message,)


def test_json_array_rows_and_invalid_json_lines(tmp_path):
    path = _write(tmp_path / "arr.json", [ROWS[0], {"instruction": "x", "output": 1}], "json")
    with pytest.raises(DataRowError, match=r"arr\.json, row 2: field 'output' must be a string, got int"):
        load_sft_examples(path)
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    with pytest.raises(DataRowError, match=r"broken\.jsonl, line 3: invalid JSON"):
        load_sft_examples(path)
    examples, report = load_sft_examples(path, skip_invalid=True)
    assert len(examples) == 2 and report.invalid == 1


def test_csv_short_row_reads_as_missing(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,input,output\nq,,a\nq2\n", encoding="utf-8")
    with pytest.raises(DataRowError, match=r"d\.csv, row 2: field 'output' is missing"):
        load_sft_examples(path)


def test_source_errors(tmp_path):
    with pytest.raises(DataSourceError, match="no such file"):
        load_sft_examples(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DataSourceError, match="unknown data file type '.txt'"):
        load_sft_examples(tmp_path / "x.txt")
    path = _write(tmp_path / "odd.jsonl", [{"question": "q", "label": 1}], "jsonl")
    with pytest.raises(DataSourceError, match=r"cannot tell the data format from the fields \(label, question\)"):
        load_sft_examples(path)
    with pytest.raises(DataSourceError, match="unknown data format 'chatml'"):
        load_sft_examples(path, "chatml")
    with pytest.raises(DataSourceError, match="no rows"):
        load_sft_examples(_write(tmp_path / "empty.jsonl", [], "jsonl"), "text")
    all_bad = _write(tmp_path / "bad.jsonl", [{"text": ""}], "jsonl")
    with pytest.raises(DataSourceError, match="no valid rows"):
        load_sft_examples(all_bad, skip_invalid=True)


def test_preference_file_is_not_sft(data_dir):
    path = data_dir / "ultrafeedback_binarized_sample.jsonl"
    assert detect_source_format(path) == "preference"
    with pytest.raises(DataSourceError, match="preference pairs"):
        load_sft_examples(path)


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(DataSourceError) as info:
        load_sft_examples("HuggingFaceH4/no_robots-missing-here")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and "HuggingFaceH4/no_robots-missing-here" in message and "Hub" in message


def test_ultrafeedback_pairs(data_dir):
    path = data_dir / "ultrafeedback_binarized_sample.jsonl"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    pairs, report = load_preference_examples(path)
    assert report.rows == 41 and report.format == "preference"
    for pair, row in zip(pairs, raw, strict=True):
        assert pair.prompt == tuple(Message(m["role"], m["content"]) for m in row["chosen"][:-1])
        assert pair.prompt[-1].content == row["prompt"]
        assert pair.chosen == row["chosen"][-1]["content"] and pair.rejected == row["rejected"][-1]["content"]
        assert pair.score_chosen == row["score_chosen"] and pair.score_rejected == row["score_rejected"]


def test_preference_layouts_and_errors(tmp_path):
    rows = [
        {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
        {
            "prompt": [{"role": "user", "content": "Q?"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        },
    ]
    pairs, _ = load_preference_examples(_write(tmp_path / "p.jsonl", rows, "jsonl"))
    assert pairs[0].prompt == pairs[1].prompt == (Message("user", "Q?"),)
    assert (pairs[0].chosen, pairs[0].rejected) == (pairs[1].chosen, pairs[1].rejected) == ("good", "bad")

    u = {"role": "user", "content": "Q?"}
    bad = [
        ({"prompt": "Q?", "chosen": "good"}, "field 'rejected' is missing"),
        ({"chosen": "good", "rejected": "bad"}, "field 'prompt' is missing"),
        (
            {
                "chosen": [u, {"role": "assistant", "content": "a"}],
                "rejected": [{**u, "content": "other"}, {"role": "assistant", "content": "b"}],
            },
            "differ before their last turn",
        ),
        (
            {"chosen": [u, {"role": "user", "content": "a"}], "rejected": [u, {"role": "assistant", "content": "b"}]},
            "last turn of 'chosen' must be an assistant turn",
        ),
        ({"prompt": "Q?", "chosen": "a", "rejected": "b", "score_chosen": "high"}, "'score_chosen' must be a number"),
    ]
    for row, reason in bad:
        path = _write(tmp_path / "bad.jsonl", [rows[0], row], "jsonl")
        with pytest.raises(DataRowError, match="bad.jsonl, line 2: .*" + reason.replace("(", r"\(")):
            load_preference_examples(path)
        assert load_preference_examples(path, skip_invalid=True)[1].invalid == 1


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, report = load_sft_examples("someone/alpaca-like", split="train[:3]", revision="v1")
    assert calls == [("someone/alpaca-like", None, "train[:3]", "v1")]
    assert [e.output for e in examples] == [r["output"] for r in ROWS]
    assert examples[1].where == "someone/alpaca-like [train[:3]], row 2"


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv"])
def test_a_byte_order_mark_and_crlf_line_ends_read_the_same(tmp_path, kind):
    rows = [
        {"instruction": "Name a colour.", "output": "Blue"},
        {"instruction": "Say hi, \u00e9l\u00e8ve.", "output": "Hi"},
    ]
    plain = _write(tmp_path / f"plain.{kind}", rows, kind)
    text = plain.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    windows = tmp_path / f"windows.{kind}"
    windows.write_bytes(b"\xef\xbb\xbf" + text)
    expected, _ = load_sft_examples(plain, "alpaca")
    got, report = load_sft_examples(windows, "alpaca")
    fields = [(e.instruction, e.input, e.output) for e in got]
    assert fields == [(e.instruction, e.input, e.output) for e in expected] and report.valid == 2
    assert fields[1] == ("Say hi, \u00e9l\u00e8ve.", "", "Hi")  # no BOM in the first key, no "\r" on a last field


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "c"}\n')
    with pytest.raises(ElmtuneError, match=r"latin1.jsonl, line 2: byte 0xe9 at column 21 is not UTF-8"):
        load_sft_examples(path, "alpaca")

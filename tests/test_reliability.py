"""Bad inputs and faults, table-driven, through the real ``elmtune`` entry point: each gives one line (no traceback),
the documented exit code (1 a failure, 2 bad usage), a message naming what to fix, and leaves the file system as it
was: no output created, no input or existing output changed.

docs/reliability.md lists the same cases with their messages.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from elmtune.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "tests" / "fixtures" / "data" / "commonsense_train_sample200.json"
PAIRS = ROOT / "tests" / "fixtures" / "data" / "ultrafeedback_binarized_sample.jsonl"
LLM_ADAPTERS = ROOT / "tests" / "fixtures" / "commonsense" / "llm_adapters"
ARC = ROOT / "tests" / "fixtures" / "commonsense" / "lm_eval" / "arc_easy.jsonl"


@dataclass(frozen=True)
class Case:
    """One bad input: the command line (``{w}`` is the workspace), the exit code and a fragment of the message."""

    name: str
    args: str
    code: int
    message: str


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Inputs the cases point at: a saved tiny base, adapters (good, truncated, NaN, foreign), bad data files, recipes,
    an existing output of every kind."""
    from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
    from elmtune.models import load_model

    w = tmp_path_factory.mktemp("reliability")
    load_model("tiny").save_pretrained(w / "base")
    (w / "truncated-base").mkdir()
    for item in (w / "base").iterdir():
        (w / "truncated-base" / item.name).write_bytes(item.read_bytes())
    _truncate(w / "truncated-base" / "model.safetensors")
    model = apply_adapter(load_model("tiny"), AdapterConfig(r=2, alpha=4, dropout=0.0, targets=("v", "proj_2")))
    good = save_adapter(model, w / "adapter", base_name="tiny")
    for name, edit in (("truncated-adapter", _truncate), ("nan-adapter", None)):
        (w / name).mkdir()
        for item in good.iterdir():
            (w / name / item.name).write_bytes(item.read_bytes())
        if edit is not None:
            edit(w / name / "adapter_model.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(w / "nan-adapter" / "adapter_model.safetensors"))
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(w / "nan-adapter" / "adapter_model.safetensors"))
    foreign = apply_adapter(load_model("tiny"), AdapterConfig(r=2, alpha=4, dropout=0.0, targets=("v",)))
    save_adapter(foreign, w / "foreign-adapter", base_name="tiny")
    config = json.loads((w / "foreign-adapter" / "adapter_config.json").read_text())
    tensors = load_file(str(w / "foreign-adapter" / "adapter_model.safetensors"))
    renamed = {k.replace("layers.0.", "layers.9."): v for k, v in tensors.items()}  # a layer tiny does not have
    save_file(renamed, str(w / "foreign-adapter" / "adapter_model.safetensors"))
    (w / "foreign-adapter" / "adapter_config.json").write_text(json.dumps(config))

    (w / "not-utf8.jsonl").write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "c"}\n')
    (w / "not-utf8-eval.jsonl").write_bytes(b'{"question": "\xff"}\n')
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()[:6]]
    (w / "identical.jsonl").write_text("".join(json.dumps({**r, "rejected": r["chosen"]}) + "\n" for r in rows))
    arc = ARC.read_text().splitlines()[:3]
    arc[1] = arc[1].replace('"answerKey": "' + json.loads(arc[1])["answerKey"] + '"', '"answerKey": "Z"')
    (w / "arc-bad-gold.jsonl").write_text("\n".join(arc) + "\n")
    recipe = f"model: tiny\ndata:\n  path: {SFT}\n  max_length: 256\ntrain:\n  max_steps: 1\n  device: cpu\n"
    (w / "targets-int.yaml").write_text(recipe + "adapter:\n  targets: 5\n")
    (w / "lr-text.yaml").write_text(recipe.replace("max_steps: 1", "max_steps: 1\n  lr: fast"))
    (w / "unknown-key.yaml").write_text(recipe + "  learning_rate: 0.1\n")
    (w / "adapter-bad.yaml").write_text("r: many\n")

    (w / "pickle-base").mkdir()
    (w / "pickle-base" / "config.json").write_bytes((w / "base" / "config.json").read_bytes())
    (w / "pickle-base" / "pytorch_model.bin").write_bytes(b"not loaded: a pickle could run code")
    (w / "outside.yaml").write_text(recipe.replace("device: cpu", "device: cpu\n  output_dir: ../outside-run"))
    (w / "a-file").write_text("not a directory\n")
    (w / "existing-dir").mkdir()
    (w / "existing-dir" / "keep.txt").write_text("user data\n")
    (w / "existing.gguf").write_bytes(b"user data")
    _finished_run(w / "run")
    return w


def _finished_run(run_dir: Path) -> None:
    """A finished two-step run of RUN_FLAGS in ``run_dir``."""
    from elmtune.adapters import AdapterConfig
    from elmtune.datasets import DataConfig
    from elmtune.finetune.config import RunConfig, TrainConfig
    from elmtune.finetune.run import run_training

    config = RunConfig(
        model="tiny",
        data=DataConfig(path=str(SFT), max_length=256, limit=16),
        adapter=AdapterConfig(r=2, alpha=4.0, dropout=0.0),
        train=TrainConfig(output_dir=str(run_dir), max_steps=2, batch_size=4, lr=1e-3, warmup=0, device="cpu"),
    )
    _fresh_accelerator_state()
    run_training(config)


RUN_FLAGS = (
    f"--model tiny --data {SFT} --max-length 256 --limit 16 --rank 2 --alpha 4 --dropout 0 --max-steps 2 "
    "--batch-size 4 --warmup 0 --device cpu"
)


TRAIN = f"train --model tiny --data {SFT} --max-length 256 --max-steps 1 --device cpu"
EVAL = f"eval tiny --protocol apple --data {LLM_ADAPTERS} --limit 1 --device cpu"

CASES = [
    # train
    Case(
        "train: model path missing", f"train --model {{w}}/no-such-model --data {SFT} -o {{w}}/out", 1, "does not exist"
    ),
    Case("train: not a device", f"{TRAIN} --device gpu -o {{w}}/out", 2, "--device 'gpu' is not a device"),
    Case("train: targets not a list", "train --config {w}/targets-int.yaml -o {w}/out", 2, "targets must be a list"),
    Case("train: number field given text", "train --config {w}/lr-text.yaml -o {w}/out", 2, "train.lr must be float"),
    Case("train: unknown recipe key", "train --config {w}/unknown-key.yaml -o {w}/out", 2, "unknown train key"),
    Case("train: recipe missing", "train --config {w}/nope.yaml -o {w}/out", 2, "does not exist"),
    Case("train: validation bigger than data", f"{TRAIN} --validation-size 500 -o {{w}}/out", 1, "leaves no training"),
    Case("train: data not UTF-8", "train --model tiny --data {w}/not-utf8.jsonl -o {w}/out", 1, "line 2: byte 0xff"),
    Case("train: data missing", "train --model tiny --data {w}/none.jsonl -o {w}/out", 1, "no such file"),
    Case("train: negative lr", f"{TRAIN} --lr -1 -o {{w}}/out", 2, "need lr > 0"),
    Case("train: zero batch", f"{TRAIN} --batch-size 0 -o {{w}}/out", 2, "batch_size and grad_accum must be >= 1"),
    Case("train: unknown flag", f"{TRAIN} --learning-rate 1 -o {{w}}/out", 2, "No such option"),
    Case("train: truncated base", f"train --model {{w}}/truncated-base --data {SFT} -o {{w}}/out", 1, "truncated"),
    Case("train: pickle weights", f"train --model {{w}}/pickle-base --data {SFT} -o {{w}}/out", 1, "safetensors only"),
    Case("train: dpo on sft data", f"{TRAIN} --objective dpo -o {{w}}/out", 1, "does not fit"),
    Case(
        "train: dpo max_length below the prompt length",
        f"train --model tiny --data {PAIRS} --objective dpo --max-length 64 --device cpu -o {{w}}/out",
        2,
        "--max-prompt-length below",
    ),
    Case(
        "train: only identical pairs",
        "train --model tiny --data {w}/identical.jsonl --objective dpo --max-length 1024 --device cpu -o {w}/out",
        1,
        "6 pairs whose chosen and rejected are identical",
    ),
    Case("train: output dir holds other files", f"{TRAIN} -o {{w}}/existing-dir", 1, "--overwrite"),
    Case("train: output is a file", f"{TRAIN} -o {{w}}/a-file", 1, "a-file"),
    Case(
        "train: resume with another lr", f"train {RUN_FLAGS} --lr 0.5 --resume -o {{w}}/run", 1, "train.lr 0.001 -> 0.5"
    ),
    Case("train: resume a missing run", f"train {RUN_FLAGS} --resume -o {{w}}/no-run", 1, "does not exist"),
    Case("train: fresh run over a finished one", f"train {RUN_FLAGS} -o {{w}}/run", 1, "checkpoints"),
    Case("train: recipe output outside", "train --config {w}/outside.yaml", 2, "outside the working directory"),
    Case("train: bad rank", f"{TRAIN} --rank 0 -o {{w}}/out", 2, "r must be a positive integer"),
    Case("train: unknown method", f"{TRAIN} --method ia3 -o {{w}}/out", 2, "method must be one of"),
    # eval
    Case(
        "eval: model path missing", f"eval {{w}}/no-such-model --data {LLM_ADAPTERS} -o {{w}}/out", 1, "does not exist"
    ),
    Case(
        "eval: truncated adapter", f"{EVAL} --adapter {{w}}/truncated-adapter -o {{w}}/out", 1, "truncated or corrupt"
    ),
    Case("eval: NaN adapter", f"{EVAL} --adapter {{w}}/nan-adapter -o {{w}}/out", 1, "NaN or infinite weights"),
    Case("eval: adapter missing", f"{EVAL} --adapter {{w}}/no-adapter -o {{w}}/out", 1, "no-adapter"),
    Case("eval: not a device", f"{EVAL} --device gpu -o {{w}}/out", 2, "--device 'gpu' is not a device"),
    Case(
        "eval: lm-eval gold label not a choice",
        "eval tiny --protocol lm-eval --tasks arc_easy --data arc_easy={w}/arc-bad-gold.jsonl -o {w}/out",
        1,
        "arc_easy row 2: the answer or choices",
    ),
    Case(
        "eval: data not UTF-8",
        "eval tiny --protocol lm-eval --tasks arc_easy --data arc_easy={w}/not-utf8-eval.jsonl -o {w}/out",
        1,
        "not UTF-8",
    ),
    Case("eval: data missing", "eval tiny --data {w}/no-data -o {w}/out", 1, "no such file"),
    Case("eval: output exists", f"{EVAL} -o {{w}}/existing-dir", 1, "--overwrite"),
    Case("eval: output is a file", f"{EVAL} -o {{w}}/a-file", 1, "a-file"),
    Case("eval: unknown protocol", f"eval tiny --protocol nope --data {LLM_ADAPTERS} -o {{w}}/out", 2, "protocol"),
    # merge and merge-adapters
    Case("merge: truncated adapter", "merge tiny {w}/truncated-adapter -o {w}/out", 1, "truncated or corrupt"),
    Case("merge: adapter missing", "merge tiny {w}/no-adapter -o {w}/out", 1, "no-adapter"),
    Case("merge: base missing", "merge {w}/no-such-model {w}/adapter -o {w}/out", 1, "no-such-model"),
    Case("merge: output exists", "merge tiny {w}/adapter -o {w}/existing-dir", 1, "--overwrite"),
    Case("merge: output is a file", "merge tiny {w}/adapter -o {w}/a-file", 1, "a-file"),
    Case(
        "merge --no-verify: module the base lacks",
        "merge tiny {w}/foreign-adapter --no-verify -o {w}/out",
        1,
        "layers.9",
    ),
    Case(
        "merge-adapters: output exists",
        "merge-adapters {w}/adapter {w}/adapter -o {w}/existing-dir",
        1,
        "--overwrite",
    ),
    Case("merge-adapters: adapter missing", "merge-adapters {w}/adapter {w}/no-adapter -o {w}/out", 1, "no-adapter"),
    # export
    Case("export: output exists", "export {w}/base --format gguf -o {w}/existing.gguf", 1, "--overwrite"),
    Case("export: source missing", "export {w}/no-such-model --format gguf -o {w}/out.gguf", 1, "no-such-model"),
    Case("export: truncated source", "export {w}/truncated-base --format gguf -o {w}/out.gguf", 1, "truncated-base"),
    Case("export: output is a directory", "export {w}/base --format gguf -o {w}/existing-dir", 1, "existing-dir"),
    # inspect and the command line itself
    Case("inspect: model path missing", "inspect {w}/no-such-model", 1, "does not exist"),
    Case("inspect: a file, not a model", "inspect {w}/a-file", 1, "a-file"),
    Case("inspect: adapter config bad", "inspect tiny --adapter {w}/adapter-bad.yaml", 2, "adapter.r must be int"),
    Case("unknown command", "frobnicate", 2, "No such command"),
]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256, and every directory (``/`` marks them)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        tree[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "/"
    return tree


def _fresh_accelerator_state() -> None:
    """Forget accelerate's process-wide state, as a new process would: earlier tests may have set another precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """Run the ``elmtune`` entry point in-process, as a fresh process would: (exit code, stdout + stderr)."""
    _fresh_accelerator_state()
    monkeypatch.setattr(sys, "argv", ["elmtune", *args])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_the_exit_code_and_changes_nothing(case, workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _tree(workspace)
    code, output = run_cli(case.args.format(w=workspace).split(), capsys, monkeypatch)
    assert "Traceback" not in output, output
    assert code == case.code, output
    assert case.message in output, output
    if code == 1:  # our own errors: exactly one line, prefixed
        lines = [line for line in output.strip().splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, output
    assert _tree(workspace) == before  # nothing created, nothing changed

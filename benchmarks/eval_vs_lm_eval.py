"""Side by side: elmtune's multiple-choice scorer vs lm-eval's Hugging Face backend on the same model and requests.

Both score exactly the same (context, continuation) requests (elmtune builds them; its tests check they equal the
requests of lm-eval's own task configs) with the same model object, BOS on. Reported per task: questions per second of
each, the speed-up, how many per-example predictions (acc and acc_norm) are identical, and the largest difference of a
choice's log-likelihood.

    python benchmarks/eval_vs_lm_eval.py --model 270M --limit 4

Defaults: the 270M shape with random weights in fp32 on the CPU, Apple's protocol on the 4-choice LLM-Adapters tasks
and lm-eval's prompts on the 4-choice lm-eval tasks, from the fixtures in ``tests/fixtures/commonsense``. lm-eval runs
with batch size 1 (the setting of Apple's numbers and of the OpenELM model card) unless ``--lm-eval-batch-size`` says
otherwise. Needs ``pip install "elmtune[lm-eval]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import namedtuple
from pathlib import Path

import torch

from elmtune.evaluation.commonsense import apple_question, apple_subset, load_rows
from elmtune.evaluation.data import read_rows
from elmtune.evaluation.lmeval_backend import lm_eval_model
from elmtune.evaluation.lmeval_tasks import LM_EVAL_TASKS, lmeval_question
from elmtune.evaluation.metrics import argmax, predict
from elmtune.evaluation.scoring import LoglikelihoodScorer
from elmtune.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
Request = namedtuple("Request", "args")


def _questions(protocol: str, task: str, data: Path, limit: int) -> list:
    if protocol == "apple":
        rows = apple_subset(load_rows(data / "llm_adapters" / task / "test.json", task), limit)
        return [apple_question(row, task) for row in rows]
    rows = read_rows(data / "lm_eval" / f"{task}.jsonl")[:limit]
    return [lmeval_question(LM_EVAL_TASKS[task], row, i) for i, row in enumerate(rows)]


def _lm_eval_scores(lm, questions: list) -> tuple[list[list[float]], float]:
    requests = [Request(req) for q in questions for req in q.requests]
    start = time.perf_counter()
    results = lm.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    lls, cursor = [], 0
    for q in questions:
        lls.append([ll for ll, _ in results[cursor : cursor + len(q.requests)]])
        cursor += len(q.requests)
    return lls, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="270M", help="preset or directory (default 270M, random weights)")
    parser.add_argument("--limit", type=int, default=4, help="questions per task")
    parser.add_argument("--apple-tasks", default="ARC-Challenge,hellaswag,openbookqa")
    parser.add_argument("--lm-eval-tasks", default="arc_challenge,hellaswag")
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "fixtures" / "commonsense")
    parser.add_argument("--batch-size", default="auto", help="elmtune rows per forward pass, or auto")
    parser.add_argument("--lm-eval-batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model, dtype=args.dtype).eval()
    tokenizer = load_tokenizer(args.model)
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    ours = LoglikelihoodScorer(model, tokenizer, batch_size=batch, add_bos=True, progress=False)
    lm = lm_eval_model(model, tokenizer, batch_size=args.lm_eval_batch_size, add_bos=True)

    jobs = [("apple", t) for t in args.apple_tasks.split(",") if t] + [
        ("lm-eval", t) for t in args.lm_eval_tasks.split(",") if t
    ]
    warm = _questions(*jobs[0], args.data, 1)  # first calls pay one-off costs: not timed
    ours.score(warm)
    _lm_eval_scores(lm, warm)

    rows = []
    for protocol, task in jobs:
        questions = _questions(protocol, task, args.data, args.limit)
        start = time.perf_counter()
        scores = ours.score(questions)
        ours_seconds = time.perf_counter() - start
        reference, lm_seconds = _lm_eval_scores(lm, questions)
        same_acc = same_norm = 0
        worst = 0.0
        for question, mine, theirs in zip(questions, scores, reference, strict=True):
            prediction = predict(question, mine)
            norm = [ll / n for ll, n in zip(theirs, question.norm_lengths, strict=True)]
            same_acc += prediction.pred == argmax(theirs)
            same_norm += prediction.pred_norm == argmax(norm)
            worst = max(worst, max(abs(s.loglikelihood - t) for s, t in zip(mine, theirs, strict=True)))
        n = len(questions)
        rows.append(
            {
                "protocol": protocol,
                "task": task,
                "questions": n,
                "choices": sum(len(q.requests) for q in questions) / n,
                "elmtune_q_per_s": n / ours_seconds,
                "lm_eval_q_per_s": n / lm_seconds,
                "speedup": lm_seconds / ours_seconds,
                "identical_acc_predictions": f"{same_acc}/{n}",
                "identical_acc_norm_predictions": f"{same_norm}/{n}",
                "max_abs_loglikelihood_diff": worst,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    print(
        f"\nmodel {args.model} ({args.dtype}, random weights), CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, python {platform.python_version()}; "
        f"elmtune layout {ours.layout}, batch {args.batch_size}; lm-eval batch {args.lm_eval_batch_size}"
    )
    print(f"command: python {' '.join(sys.argv)}\n")
    print(
        "| protocol | task | n | choices | elmtune q/s | lm-eval q/s | speed-up | same acc pred | same acc_norm pred |"
        " max abs Δ log-lik |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['protocol']} | {r['task']} | {r['questions']} | {r['choices']:.1f} | {r['elmtune_q_per_s']:.3f} | "
            f"{r['lm_eval_q_per_s']:.3f} | {r['speedup']:.2f}x | {r['identical_acc_predictions']} | "
            f"{r['identical_acc_norm_predictions']} | {r['max_abs_loglikelihood_diff']:.2e} |"
        )
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

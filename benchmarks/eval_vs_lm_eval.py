"""Side by side: elmtune's multiple-choice scorer vs lm-eval's Hugging Face backend on the same model and requests.

Both score exactly the same (context, continuation) requests (elmtune builds them; its tests check they equal the
requests of lm-eval's own task configs) with the same model object, BOS on. lm-eval runs twice: at batch size 1 (the
setting of Apple's numbers and of the OpenELM model card) and at the batch size elmtune used (its largest batch, in
rows, unless ``--lm-eval-batch-size`` says otherwise). Every side is warmed up first; then each task's questions are
scored in chunks, and within every chunk the sides take turns in a rotating order, so that load from other processes
on a shared machine hits all of them alike. Reported per task: questions per second of each side, the speed-ups, how
many per-example predictions (acc and acc_norm) equal lm-eval's, and the largest difference of a choice's
log-likelihood.

    python benchmarks/eval_vs_lm_eval.py --model 270M --limit 24

Defaults: the 270M shape with random weights in fp32 on the CPU, Apple's protocol on the 4-choice LLM-Adapters tasks
and lm-eval's prompts on the 4-choice lm-eval tasks, from the fixtures in ``tests/fixtures/commonsense``. Needs
``pip install "elmtune[lm-eval]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import namedtuple
from functools import partial
from pathlib import Path

import torch

from elmtune.evaluation.data import load_rows, read_rows
from elmtune.evaluation.lmeval import LM_EVAL_TASKS, lm_eval_model, lmeval_question
from elmtune.evaluation.protocols import apple_question, apple_subset
from elmtune.evaluation.report import argmax, predict
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


def _lm_eval_scores(lm, questions: list) -> list[list[float]]:
    requests = [Request(req) for q in questions for req in q.requests]
    results = lm.loglikelihood(requests, disable_tqdm=True)
    lls, cursor = [], 0
    for q in questions:
        lls.append([ll for ll, _ in results[cursor : cursor + len(q.requests)]])
        cursor += len(q.requests)
    return lls


def _timed(fn, questions: list) -> tuple[list, float]:
    start = time.perf_counter()
    out = fn(questions)
    return out, time.perf_counter() - start


def _compare(questions: list, mine: list, theirs: list[list[float]]) -> tuple[int, int, float]:
    same_acc = same_norm = 0
    worst = 0.0
    for question, scores, reference in zip(questions, mine, theirs, strict=True):
        prediction = predict(question, scores)
        norm = [ll / n for ll, n in zip(reference, question.norm_lengths, strict=True)]
        same_acc += prediction.pred == argmax(reference)
        same_norm += prediction.pred_norm == argmax(norm)
        worst = max(worst, max(abs(s.loglikelihood - t) for s, t in zip(scores, reference, strict=True)))
    return same_acc, same_norm, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="270M", help="preset or directory (default 270M, random weights)")
    parser.add_argument("--limit", type=int, default=24, help="questions per task")
    parser.add_argument("--chunk", type=int, default=12, help="questions per turn of each side")
    parser.add_argument("--apple-tasks", default="ARC-Challenge,ARC-Easy,hellaswag,openbookqa")
    parser.add_argument("--lm-eval-tasks", default="arc_challenge,arc_easy,hellaswag,openbookqa")
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "fixtures" / "commonsense")
    parser.add_argument("--batch-size", default="auto", help="elmtune rows per forward pass, or auto")
    parser.add_argument("--lm-eval-batch-size", type=int, help="lm-eval's second batch size (default: elmtune's)")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model, dtype=args.dtype).eval()
    tokenizer = load_tokenizer(args.model)
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    ours = LoglikelihoodScorer(model, tokenizer, batch_size=batch, add_bos=True, progress=False)
    jobs = [("apple", t) for t in args.apple_tasks.split(",") if t] + [
        ("lm-eval", t) for t in args.lm_eval_tasks.split(",") if t
    ]
    questions = {job: _questions(*job, args.data, args.limit) for job in jobs}

    # Warm-up (not timed): one chunk of every task through elmtune, which also gives its batch size in rows.
    for job in jobs:
        ours.score(questions[job][: args.chunk])
    lm_batch = args.lm_eval_batch_size or ours.batcher.largest_batch
    sides = {
        "elmtune": ours.score,
        "lm-eval bs 1": partial(_lm_eval_scores, lm_eval_model(model, tokenizer, batch_size=1, add_bos=True)),
        f"lm-eval bs {lm_batch}": partial(
            _lm_eval_scores, lm_eval_model(model, tokenizer, batch_size=lm_batch, add_bos=True)
        ),
    }
    names = list(sides)
    for name in names[1:]:
        sides[name](questions[jobs[0]][: args.chunk])

    rows, turn = [], 0
    for job in jobs:
        qs = questions[job]
        seconds = dict.fromkeys(names, 0.0)
        scores: dict[str, list] = {name: [] for name in names}
        for start in range(0, len(qs), args.chunk):
            chunk = qs[start : start + args.chunk]
            for name in names[turn % 3 :] + names[: turn % 3]:  # rotate who goes first
                out, took = _timed(sides[name], chunk)
                scores[name] += out
                seconds[name] += took
            turn += 1
        n = len(qs)
        same_acc, same_norm, worst = _compare(qs, scores["elmtune"], scores[names[1]])
        batched_acc, batched_norm, batched_worst = _compare(qs, scores["elmtune"], scores[names[2]])
        rows.append(
            {
                "protocol": job[0],
                "task": job[1],
                "questions": n,
                "choices": sum(len(q.requests) for q in qs) / n,
                "seconds": seconds,
                "q_per_s": {name: n / seconds[name] for name in names},
                "speedup_vs_lm_eval_bs1": seconds[names[1]] / seconds["elmtune"],
                "speedup_vs_lm_eval_same_batch": seconds[names[2]] / seconds["elmtune"],
                "identical_acc_predictions": f"{same_acc}/{n}",
                "identical_acc_norm_predictions": f"{same_norm}/{n}",
                "identical_predictions_vs_batched_lm_eval": f"{batched_acc}/{n}, {batched_norm}/{n}",
                "max_abs_loglikelihood_diff": max(worst, batched_worst),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    print(
        f"\nmodel {args.model} ({args.dtype}, random weights), CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, python {platform.python_version()}; "
        f"elmtune layout {ours.layout}, batch {args.batch_size} (largest {ours.batcher.largest_batch} rows); "
        f"lm-eval batch 1 and {lm_batch}; {args.chunk} questions per turn"
    )
    print(f"command: python {' '.join(sys.argv)}\n")
    print(
        f"| protocol | task | n | elmtune q/s | lm-eval bs 1 q/s | speed-up | lm-eval bs {lm_batch} q/s | speed-up |"
        " same acc / acc_norm pred | max abs Δ log-lik |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        group = [r for r in rows if r["protocol"] == protocol]
        for r in group:
            q = r["q_per_s"]
            print(
                f"| {r['protocol']} | {r['task']} | {r['questions']} | {q['elmtune']:.2f} | {q[names[1]]:.2f} | "
                f"{r['speedup_vs_lm_eval_bs1']:.2f}x | {q[names[2]]:.2f} | {r['speedup_vs_lm_eval_same_batch']:.2f}x | "
                f"{r['identical_acc_predictions']}, {r['identical_acc_norm_predictions']} | "
                f"{r['max_abs_loglikelihood_diff']:.1e} |"
            )
        n = sum(r["questions"] for r in group)
        total = {name: sum(r["seconds"][name] for r in group) for name in names}
        print(
            f"| {protocol} | **all** | {n} | {n / total['elmtune']:.2f} | {n / total[names[1]]:.2f} | "
            f"{total[names[1]] / total['elmtune']:.2f}x | {n / total[names[2]]:.2f} | "
            f"{total[names[2]] / total['elmtune']:.2f}x | | |"
        )
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

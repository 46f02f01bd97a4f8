"""Profile elmtune's LoRA training step, and measure what computing logits only at target positions buys.

    python benchmarks/profile_step.py                      # both measurements, 270M, 3 rounds
    python benchmarks/profile_step.py --profile-only       # torch.profiler table of one step
    python benchmarks/profile_step.py --preset tiny --seq 64 --rounds 1   # seconds

The batch is real: the first ``--batch`` rows of the shipped commonsense sample rendered with the alpaca template,
prompt masked (``train_on_prompt: false``, so only the response is a target), padded to the longest row, at most
``--seq`` tokens. The step is the training loop's own: ``SFTObjective`` (forward, loss), backward, AdamW, on the
preset (random weights) with Apple's recipe targets, r 32, fp32.

``--loss full`` hides ``logits_to_keep`` from the objective (the model is wrapped in a module whose forward lacks
it), so the loss falls back to the logits of every position: the path before the change. ``--loss targets`` is
the shipped path. Each kind runs in its own process, interleaved, best of ``--rounds``; peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path


def _batch(args: argparse.Namespace) -> dict:
    from elmtune.datasets import DataConfig, prepare_data
    from elmtune.models import load_tokenizer
    from elmtune.shipped_files import shipped_path

    config = DataConfig(
        path=shipped_path("elmtune:samples/commonsense_train_sample200.json", where="profile_step"),
        format="commonsense",
        template="alpaca",
        train_on_prompt=False,
        max_length=args.seq,
        validation_size=0,
    )
    data = prepare_data(config, load_tokenizer())
    return data.collate(list(data.train[: args.batch]))


def _model(args: argparse.Namespace):
    from elmtune.adapters import AdapterConfig, apply_adapter
    from elmtune.models import load_model

    config = AdapterConfig(r=args.r, alpha=args.r, dropout=0.0, targets=("apple",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_adapter(load_model(args.preset), config).train()


class _AllPositions:
    """Wraps a model so that its forward has no ``logits_to_keep``: the loss gets every position's logits."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def _step_fn(args: argparse.Namespace):
    import torch

    from elmtune.finetune.objectives import SFTObjective

    model, batch = _model(args), _batch(args)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    objective = SFTObjective()
    forward = _AllPositions(model) if args.loss == "full" else model
    if args.loss == "full":
        _AllPositions.forward = _AllPositions.__call__  # what keeps_logits_subset inspects

    def step() -> None:
        objective(forward, batch).loss_sum.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    shape = tuple(batch["input_ids"].shape)
    targets = int((batch["labels"][:, 1:] != -100).sum())
    return step, shape, targets


def run_step(args: argparse.Namespace) -> dict:
    """One process: warm-up step, then the fastest of ``--steps`` timed steps, and peak RSS."""
    step, shape, targets = _step_fn(args)
    step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    return {"loss": args.loss, "step_seconds": min(seconds), "peak_rss_mib": rss, "batch": shape, "targets": targets}


def profile(args: argparse.Namespace) -> None:
    """Print the step's most expensive operators and the time per category."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step, shape, targets = _step_fn(args)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        step()
    events = prof.key_averages()
    print(f"batch {shape}, {targets} target tokens, loss {args.loss}")
    table = prof.key_averages(group_by_input_shape=True) if args.shapes else events
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
    from suite.op_categories import self_ms_by_category

    totals = self_ms_by_category(events)
    whole = sum(totals.values())
    print(json.dumps({k: f"{v:.0f} ms ({v / whole:.0%})" for k, v in totals.items()}))


def compare(args: argparse.Namespace) -> None:
    """Run both loss kinds in their own processes, interleaved, and print the best of each and the ratios."""
    results: dict[str, list[dict]] = {"full": [], "targets": []}
    for _ in range(args.rounds):
        for kind in results:
            child = [sys.executable, str(Path(__file__).resolve()), "--worker", "--loss", kind, *_shared(args)]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            results[kind].append(json.loads(out.strip().splitlines()[-1]))
    best = {k: {m: min(r[m] for r in rows) for m in ("step_seconds", "peak_rss_mib")} for k, rows in results.items()}
    summary = {
        "preset": args.preset,
        "batch": results["targets"][0]["batch"],
        "target_tokens": results["targets"][0]["targets"],
        "best": best,
        "step_time_targets_over_full": best["targets"]["step_seconds"] / best["full"]["step_seconds"],
        "peak_rss_targets_over_full": best["targets"]["peak_rss_mib"] / best["full"]["peak_rss_mib"],
        "rounds": args.rounds,
    }
    print(json.dumps(summary))


def _shared(args: argparse.Namespace) -> list[str]:
    return ["--preset", args.preset, "--batch", str(args.batch), "--seq", str(args.seq), "--r", str(args.r),
            "--steps", str(args.steps)]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the profile, the comparison, or one worker."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="270M")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--loss", choices=("full", "targets"), default="targets")
    parser.add_argument("--profile-only", action="store_true")
    parser.add_argument("--shapes", action="store_true", help="group the profile table by input shapes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_step(args)))
        return
    profile(args)
    if not args.profile_only:
        compare(args)


if __name__ == "__main__":
    main()

"""Where a LoRA training step's time goes: elmtune against the same-shape transformers Llama, by operator kind.

    python benchmarks/profile_vs_llama.py              # 270M shape, fp32, batch 4 x 256, r 32, Apple's targets
    python benchmarks/profile_vs_llama.py --quick      # tiny preset, batch 2 x 32, r 4: seconds
    python benchmarks/profile_vs_llama.py --apple-code DIR --apple-python PY   # and Apple's code + peft

Each side is the ``train-step`` group's exact step (``suite/train_sides.py``: one fixed batch of random tokens, the
model's own loss, backward, AdamW) in its own process: one warm-up step, then one step under ``torch.profiler``
(CPU). The sides alternate for ``--rounds`` rounds and each keeps its round with the least total self time. The
table gives each category's milliseconds on both sides and the difference, then each side's most expensive
operators, so a gap between the two models is traced to the operators that make it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite.settings import Settings  # noqa: E402

SIDES = ("elmtune", "llama", "apple")


def profile_side(side: str, settings: Settings, top: int) -> dict:
    """One process: warm up, profile one step; milliseconds per category and the top operators."""
    import torch
    from suite.measure import set_threads
    from suite.op_categories import category, self_ms_by_category
    from suite.train_sides import apple_adapted, elmtune_adapted, llama_adapted
    from torch.profiler import ProfilerActivity, profile

    set_threads(settings)
    model = {"elmtune": elmtune_adapted, "llama": llama_adapted, "apple": apple_adapted}[side](settings)
    ids = torch.randint(3, 32000, (settings.batch, settings.seq), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    operators = [(e.key, round(e.self_cpu_time_total / 1e3, 1), e.count, category(e.key)) for e in events[:top]]
    return {"side": side, "categories": self_ms_by_category(events), "top": operators}


def _table(best: dict[str, dict]) -> str:
    """Categories side by side: ms of each side, elmtune's less each other side's, and the totals."""
    sides = list(best)
    others = [side for side in sides if side != "elmtune"]
    header = [f"{side} ms" for side in sides] + [f"elmtune - {side} ms" for side in others]
    lines = ["| category | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    by_side = {side: best[side]["categories"] for side in sides}
    by_side = {side: {**kinds, "total": sum(kinds.values())} for side, kinds in by_side.items()}
    for kind in by_side["elmtune"]:
        cells = [f"{by_side[side][kind]:.0f}" for side in sides]
        cells += [f"{by_side['elmtune'][kind] - by_side[side][kind]:+.0f}" for side in others]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the sides interleaved (or, with ``--worker``, one side) and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, small shapes")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--top", type=int, default=12, help="operators listed per side")
    parser.add_argument("--apple-code", type=Path, help="directory with Apple's two modeling files: adds its side")
    parser.add_argument("--apple-python", type=Path, help="the Python to run Apple's side under")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apple = str(args.apple_code.resolve()) if args.apple_code else ""
    settings = Settings(threads=args.threads, apple_code=apple)
    settings = settings.quick() if args.quick else settings
    if args.worker:
        print(json.dumps(profile_side(args.worker, settings, args.top)))
        return 0
    sides = SIDES if apple else SIDES[:2]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            python = str(args.apple_python.absolute()) if side == "apple" and args.apple_python else sys.executable
            child = [python, __file__, "--worker", side, "--threads", str(args.threads), "--top", str(args.top)]
            child += ["--quick"] if args.quick else []
            child += ["--apple-code", apple] if apple else []
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
    best = {side: min(rows, key=lambda r: sum(r["categories"].values())) for side, rows in runs.items()}
    print(f"{settings.describe()}; best of {args.rounds} round(s) per side\n")
    print(_table(best))
    for side in sides:
        print(f"\n{side}: top operators by self CPU time (ms, calls, category)")
        for name, ms, count, kind in best[side]["top"]:
            print(f"  {ms:9.1f}  {count:5d}  {kind:12s} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

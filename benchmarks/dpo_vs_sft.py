"""Optimizer step time of DPO (reference on the fly, and precomputed) versus SFT over the same 2N sequences.

One random-weight OpenELM with one LoRA adapter runs four kinds of optimizer step (forward, backward, AdamW) through
elmtune's own objectives: ``sft`` (``SFTObjective`` on 2N sequences), ``dpo`` (``PreferenceObjective`` on N pairs
made of the same 2N sequences, each pair's prompt computed once, the reference forward computed in the step with the
adapter switched off), ``dpo-precomputed`` (the same, with the pairs' reference log-probs computed once before timing
and looked up by ``item_index``) and ``dpo-separate`` (on the fly with the chosen and rejected sequences as separate
rows, ``share_prompt=False``). The two sequences of a pair share their first half (the prompt); the second half is
the reply. It also times the separate rows' reference forward alone (``reference-forward``, no gradient):
``dpo-separate`` cannot cost less than ``sft`` plus it, which the table's last line states as the floor of that
ratio; the shared prompt is how ``dpo`` goes below it. Steps are
interleaved, the order rotating each round, so machine load affects all alike; each kind's best (minimum) step is
reported, and its ratio to SFT. On a CPU a step is timed as this process's CPU time with a fixed thread count
(other processes on a shared machine barely disturb it); wall time is shown too.

    python benchmarks/dpo_vs_sft.py                # 270M shape, apple targets, r 16, N 2 pairs, seq 256, fp32
    python benchmarks/dpo_vs_sft.py --quick        # tiny preset, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

KINDS = ("sft", "dpo", "dpo-precomputed", "dpo-separate", "reference-forward")
"""``reference-forward`` is not a step: the reference pass over the 2N separate sequences alone (no grad).
``dpo-separate`` is an ``sft`` step plus it, so ``1 + reference-forward / sft`` is the floor of its ratio to SFT."""


def parse_args() -> argparse.Namespace:
    """Command-line options (``--quick`` replaces the model and sizes with the tiny preset's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="270M", help="OpenELM preset (random weights)")
    parser.add_argument("--pairs", type=int, default=2, help="N: pairs per DPO step (SFT steps on 2N sequences)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence (half prompt, half response)")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds (each runs every kind once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--targets", default="apple")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (timing uses the process CPU time)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short sequences: a few seconds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.seq, args.rounds = "tiny", 64, 3
    return args


def build_batches(args: argparse.Namespace, vocab: int):  # noqa: ANN201 - torch objects, imported lazily
    """The SFT batch of 2N sequences and the DPO batch of N pairs made of the same sequences (prompt masked).

    Pair i is sequences i (chosen) and N + i (rejected); they share their first half, the prompt.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2 * args.pairs, args.seq), generator=generator)  # (2N, L)
    ids[args.pairs :, : args.seq // 2] = ids[: args.pairs, : args.seq // 2]  # a pair's two sequences: one prompt
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100  # the first half is the prompt
    mask = torch.ones_like(ids)
    chosen, rejected = slice(0, args.pairs), slice(args.pairs, 2 * args.pairs)
    sft = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    dpo = {
        "chosen_input_ids": ids[chosen],
        "chosen_attention_mask": mask[chosen],
        "chosen_labels": labels[chosen],
        "rejected_input_ids": ids[rejected],
        "rejected_attention_mask": mask[rejected],
        "rejected_labels": labels[rejected],
    }
    to = args.device
    return {k: v.to(to) for k, v in sft.items()}, {k: v.to(to) for k, v in dpo.items()}


def build_steps(args: argparse.Namespace) -> tuple[dict, int]:
    """One model with one LoRA adapter: for each kind of step a function running one optimizer step; adapter size."""
    import torch

    from elmtune.adapters import AdapterConfig, apply_adapter
    from elmtune.finetune.objectives import PreferenceObjective, SFTObjective
    from elmtune.finetune.reference import ReferenceLogps
    from elmtune.models import load_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = AdapterConfig(r=args.r, alpha=args.r, dropout=args.dropout, targets=(args.targets,))
        model = apply_adapter(load_model(args.preset, device=args.device), config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    sft_batch, dpo_batch = build_batches(args, model.config.vocab_size)
    sft, dpo = SFTObjective(), PreferenceObjective(beta=0.1)
    separate = PreferenceObjective(beta=0.1, share_prompt=False)
    table = ReferenceLogps(*dpo.reference_logps(model, dpo_batch).chunk(2))
    precomputed = PreferenceObjective(beta=0.1, precomputed=table)
    indexed = {**dpo_batch, "item_index": torch.arange(args.pairs, device=args.device)}
    objectives = {
        "sft": (sft, sft_batch),
        "dpo": (dpo, dpo_batch),
        "dpo-precomputed": (precomputed, indexed),
        "dpo-separate": (separate, dpo_batch),
    }

    def step(kind: str) -> None:
        if kind == "reference-forward":
            separate.reference_logps(model, dpo_batch)
            return
        objective, batch = objectives[kind]
        out = objective(model, batch)
        (out.loss_sum / objective.count(batch)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {kind: (lambda kind=kind: step(kind)) for kind in KINDS}, sum(p.numel() for p in params)


def main() -> None:
    """Time the three kinds of step and print the table and the ratios to SFT."""
    args = parse_args()
    import torch
    from rich.console import Console
    from rich.table import Table

    on_cpu = not args.device.startswith("cuda")
    if on_cpu:
        torch.set_num_threads(args.threads)
    steps, adapter_params = build_steps(args)

    def step(kind: str) -> tuple[float, float]:
        """(timed seconds: CPU time on a CPU, wall time on CUDA; wall seconds) of one optimizer step."""
        sync = (lambda: None) if on_cpu else torch.cuda.synchronize
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        steps[kind]()
        sync()
        wall = time.perf_counter() - start
        return (time.process_time() - start_cpu if on_cpu else wall), wall

    times: dict[str, list[float]] = {k: [] for k in KINDS}
    walls: dict[str, list[float]] = {k: [] for k in KINDS}
    for i in range(args.warmup + args.rounds):
        order = KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]
        for kind in order:
            seconds, wall = step(kind)
            if i >= args.warmup:
                times[kind].append(seconds)
                walls[kind].append(wall)
        print(f"round {i + 1}/{args.warmup + args.rounds} done", file=sys.stderr, flush=True)

    best = {k: min(t) for k, t in times.items()}
    clock = f"CPU time, {args.threads} thread(s)" if on_cpu else "wall time"
    result = Table(
        title=f"{args.preset} fp32 {args.device}, {args.pairs} pairs = {2 * args.pairs} sequences x {args.seq} tokens, "
        f"targets {args.targets}, r {args.r} ({adapter_params / 1e6:.2f} M adapter parameters), best of "
        f"{args.rounds} interleaved rounds ({clock})"
    )
    for column in ("step", "best (s)", "vs sft", "median wall (s)"):
        result.add_column(column, justify="right")
    for kind in KINDS:
        walls_sorted = sorted(walls[kind])
        result.add_row(
            kind, f"{best[kind]:.3f}", f"{best[kind] / best['sft']:.3f}x", f"{walls_sorted[len(walls_sorted) // 2]:.3f}"
        )
    Console().print(result)
    floor = 1 + best["reference-forward"] / best["sft"]
    print(f"floor of dpo-separate / sft (an sft step plus the reference forward): {floor:.3f}x")
    print("command: python " + " ".join(sys.argv))
    if args.json:
        ratios = {k: best[k] / best["sft"] for k in KINDS}
        payload = {"args": vars(args), "seconds": times, "wall_seconds": walls, "ratio_to_sft": ratios}
        print(json.dumps({**payload, "on_the_fly_floor": floor}))


if __name__ == "__main__":
    main()

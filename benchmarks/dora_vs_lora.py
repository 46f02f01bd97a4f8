"""Training step time of elmtune's DoRA versus LoRA (and peft's stock DoRA), side by side in one process.

Three copies of the same random-weight OpenELM get the same adapter config (targets, rank, dropout): ``lora``,
``dora`` (elmtune: reuses the base output under dropout) and ``dora-peft`` (peft's own DoRA layer, which recomputes
the base matmul on the dropped-out input). Steps (forward, backward, AdamW) run round-robin, the order rotating each
round, so machine load affects all three alike. On a CPU each step is timed as the CPU time of this process (one
thread by default), which other processes on a shared machine barely disturb; wall time is reported too. The table
gives medians and the ratio to LoRA.

    python benchmarks/dora_vs_lora.py --preset 270M --batch 1 --seq 128 --steps 4 --dropout 0.1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings


def build(base, variant: str, cfg, copy_base: bool = True):  # noqa: ANN001, ANN201 - torch objects, imported lazily
    """One trainable copy of ``base`` with the adapter of ``variant`` (``base`` itself when ``copy_base`` is False)."""
    from peft import get_peft_model

    from elmtune.adapters import AdapterConfig, apply_adapter, build_lora_config

    model = copy.deepcopy(base) if copy_base else base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "lora":
            return apply_adapter(model, AdapterConfig(**{**cfg, "method": "lora"}))
        if variant == "dora":
            return apply_adapter(model, AdapterConfig(**{**cfg, "method": "dora"}))
        lora_config = build_lora_config(model, AdapterConfig(**{**cfg, "method": "dora"}))
        lora_config._custom_modules = None  # peft's own layers, i.e. its stock DoRA
        for param in model.parameters():
            param.requires_grad_(False)
        return get_peft_model(model, lora_config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="270M", help="OpenELM preset (random weights)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--targets", default="all", help="adapter targets (e.g. all, apple, q,v)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="lora,dora,dora-peft")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (timing uses the process CPU time)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from elmtune.models import OpenELMConfig, OpenELMForCausalLM

    torch.manual_seed(0)
    on_cpu = not args.device.startswith("cuda")
    if on_cpu:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    base = OpenELMForCausalLM(OpenELMConfig.from_preset(args.preset)).to(dtype=dtype, device=args.device)
    cfg = {"r": args.r, "alpha": args.r, "dropout": args.dropout, "targets": args.targets}
    variants = args.variants.split(",")
    models = {v: build(base, v, cfg).train() for v in variants}
    del base
    optimizers = {
        v: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for v, m in models.items()
    }
    ids = torch.randint(3, 32000, (args.batch, args.seq), device=args.device)

    def step(variant: str) -> tuple[float, float]:
        """(timed seconds: CPU time on a CPU, wall time on CUDA; wall seconds)."""
        sync = (lambda: None) if on_cpu else torch.cuda.synchronize
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = models[variant](input_ids=ids, labels=ids).loss
        loss.backward()
        optimizers[variant].step()
        optimizers[variant].zero_grad(set_to_none=True)
        sync()
        wall = time.perf_counter() - start
        return (time.process_time() - start_cpu if on_cpu else wall), wall

    times: dict[str, list[float]] = {v: [] for v in variants}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    rounds = args.warmup + args.steps
    for i in track(range(rounds), description="round-robin steps"):
        order = variants[i % len(variants) :] + variants[: i % len(variants)]
        for variant in order:
            seconds, wall = step(variant)
            if i >= args.warmup:
                times[variant].append(seconds)
                walls[variant].append(wall)

    medians = {v: statistics.median(t) for v, t in times.items()}
    reference = medians.get("lora", next(iter(medians.values())))
    clock = f"CPU time, {args.threads} thread(s)" if on_cpu else "wall time"
    table = Table(
        title=f"{args.preset} {args.dtype} {args.device}, batch {args.batch} x seq {args.seq}, r {args.r}, "
        f"dropout {args.dropout}, targets {args.targets}, median of {args.steps} steps ({clock})"
    )
    for column in ("variant", "step (s)", "min (s)", "vs lora", "wall (s)"):
        table.add_column(column, justify="right")
    for variant in variants:
        table.add_row(
            variant,
            f"{medians[variant]:.3f}",
            f"{min(times[variant]):.3f}",
            f"{medians[variant] / reference:.2f}x",
            f"{statistics.median(walls[variant]):.3f}",
        )
    Console().print(table)
    if args.json:
        ratios = {v: medians[v] / reference for v in variants}
        print(json.dumps({"args": vars(args), "seconds": times, "wall_seconds": walls, "ratio_to_lora": ratios}))


if __name__ == "__main__":
    main()

"""Where the peak memory of the ``train-step`` row's LoRA step goes: weights, adapter state, and saved activations.

    python benchmarks/step_memory.py                                   # elmtune and the same-shape Llama, 270M
    python benchmarks/step_memory.py --apple-code DIR --apple-python PY   # and Apple's code (its own environment)
    python benchmarks/step_memory.py --quick                           # tiny preset, small shapes

Each side runs the row's exact step (``suite/train_sides.py``: the model's own loss on one batch of random tokens,
backward, AdamW) in its own process and reports, in MiB: the resident memory after importing torch, transformers
and peft (the floor); the model's frozen weights; the adapter's parameters, gradients and AdamW moments; the
tensors autograd keeps for the backward pass (counted once per storage with a ``saved_tensors_hooks`` pack hook,
parameters excluded), split by the module that saved them (attention, feed-forward, norms, LoRA, and the model
itself: logits and loss); and the process's peak resident memory after one step (``VmHWM``). Prints one JSON line
per side and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite.settings import Settings  # noqa: E402

MIB = 2**20
CATEGORIES = ("attention", "feed-forward", "norms", "LoRA", "embedding", "logits and loss")


def category(module_name: str) -> str:
    """The part of the model a module belongs to, from its qualified name (elmtune, Apple's code or the Llama)."""
    last = module_name.rsplit(".", 1)[-1]
    if "lora_" in module_name:
        return "LoRA"
    if "norm" in last:
        return "norms"
    if any(part in module_name for part in ("attn", "qkv_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention"
    if any(part in module_name for part in ("ffn", "mlp", "proj_1", "proj_2")):
        return "feed-forward"
    if "embed" in module_name:
        return "embedding"
    return "logits and loss"


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_side(side: str, settings: Settings) -> dict:
    """One process: build the side's adapted model, count what one step keeps, then run the step."""
    import peft  # noqa: F401 - the floor: what every side imports before building its model
    import torch
    import transformers  # noqa: F401
    from suite.measure import set_threads
    from suite.train_sides import apple_adapted, elmtune_adapted, llama_adapted

    floor = _status_mib("VmRSS")
    set_threads(settings)
    model = {"elmtune": elmtune_adapted, "apple": apple_adapted, "llama": llama_adapted}[side](settings)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    parameter_storages = {p.untyped_storage().data_ptr() for p in params}
    stack: list[str] = [""]  # the modules running now, innermost last

    def leave(*_: object) -> None:  # a forward hook that returns nothing keeps the module's output
        stack.pop()

    for name, module in model.named_modules():
        module.register_forward_pre_hook(lambda _m, _a, name=name: stack.append(name))
        module.register_forward_hook(leave)
    saved: dict[int, tuple[str, int]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = (category(stack[-1]), storage.nbytes())
        return tensor

    ids = torch.randint(3, 32000, (settings.batch, settings.seq), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    by_category = dict.fromkeys(CATEGORIES, 0.0)
    for kind, nbytes in saved.values():
        by_category[kind] += nbytes / MIB
    adapter = sum(p.numel() * p.element_size() for p in trainable) / MIB
    return {
        "side": side,
        "floor_mib": floor,
        "weights_mib": sum(p.numel() * p.element_size() for p in params if not p.requires_grad) / MIB,
        "adapter_state_mib": 4 * adapter,  # parameters, gradients, two AdamW moments
        "saved_mib": sum(by_category.values()),
        "saved_by_category_mib": by_category,
        "peak_rss_mib": _status_mib("VmHWM"),
    }


def _table(results: list[dict]) -> str:
    names = [r["side"] for r in results]
    lines = ["| MiB | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    rows = [("import floor", "floor_mib"), ("frozen weights", "weights_mib"), ("adapter state", "adapter_state_mib")]
    rows += [("saved for backward", "saved_mib")]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(f"{r[key]:.0f}" for r in results) + " |")
    for kind in CATEGORIES:
        lines.append(f"| - {kind} | " + " | ".join(f"{r['saved_by_category_mib'][kind]:.0f}" for r in results) + " |")
    lines.append("| **peak RSS** | " + " | ".join(f"**{r['peak_rss_mib']:.0f}**" for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, batch 2 x 32, r 4")
    parser.add_argument("--apple-code", type=Path, help="directory with Apple's two modeling files: adds its side")
    parser.add_argument("--apple-python", type=Path, help="the Python to run Apple's side under")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # the child process: one side
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(measure_side(args.side, Settings.from_json(args.settings))), flush=True)
        return 0
    settings = Settings().quick() if args.quick else Settings()
    if args.apple_code is not None:
        settings = Settings(**{**json.loads(settings.to_json()), "apple_code": str(args.apple_code.resolve())})
    sides = ["elmtune", "llama"] + (["apple"] if args.apple_code else [])
    results = []
    for side in sides:
        python = str(args.apple_python.absolute()) if side == "apple" and args.apple_python else sys.executable
        command = [python, __file__, "--side", side, "--settings", settings.to_json()]
        child = subprocess.run(command, capture_output=True, text=True, check=False)
        if child.returncode != 0:
            print(f"error: side {side} failed:\n{child.stderr[-3000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{settings.describe()}\n\n{_table(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

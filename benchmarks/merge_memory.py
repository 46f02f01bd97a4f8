"""Wall time and peak memory of ``elmtune merge``, in memory and with ``--low-memory``, on published OpenELM shapes.

For every preset this builds a base checkpoint with random weights (``save_pretrained``, safetensors) and a LoRA
adapter with non-zero B on Apple's targets (``apple``: qkv_proj, out_proj, proj_1, proj_2 and the token embedding),
then runs ``elmtune merge`` in a fresh child process per mode: in memory and ``--low-memory``, each with the merge
check and with ``--no-verify``. Each child reads its own peak resident memory (Linux ``VmHWM``) when the command ends.
Two more children give the scale: ``import`` (Python, torch, transformers and the modules ``elmtune merge`` has
imported when it reads its first tensor: the floor) and
``load_model`` (the whole base resident). The low-memory promise is a peak near the floor plus a small multiple of
the largest tensor plus the adapter, whatever the model size.

    python benchmarks/merge_memory.py                                # 270M and 1_1B, bf16 (the hub's dtype)
    python benchmarks/merge_memory.py --presets 3B --dtype f32       # the 12 GB case

Checkpoints go to a temporary directory (``--workdir`` to choose where) and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
mode, args = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
result = {}
if mode == "build":
    import torch
    from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
    from elmtune.models import OpenELMConfig, OpenELMForCausalLM
    preset, dtype, base_dir, adapter_dir, rank = args
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, dtype))  # built in the checkpoint dtype: no fp32 copy of a 3B model
    model = OpenELMForCausalLM(OpenELMConfig.from_preset(preset)).eval()
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():  # blocks start as the identity: clear top-1 tokens, which random weights lack
        for name, param in model.named_parameters():
            if "out_proj" in name or "proj_2" in name:
                param.zero_()
    model.save_pretrained(base_dir)
    result["largest_tensor"] = max(t.numel() * t.element_size() for t in model.state_dict().values())
    result["parameters"] = sum(t.numel() for t in model.state_dict().values())
    peft_model = apply_adapter(model, AdapterConfig(r=int(rank), alpha=2 * int(rank), targets=("apple",)))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:  # as after training: the update is not zero
                param.add_((torch.randn(param.shape, generator=generator) * 1e-3).to(param))
    save_adapter(peft_model, adapter_dir, base_name=preset)
elif mode == "import":  # what `elmtune merge` has imported when it reads its first tensor
    import elmtune.cli.app, elmtune.merging.run, elmtune.merging.verify, elmtune.models.modeling  # noqa: F401
elif mode == "load":
    from elmtune.models import load_model
    model = load_model(args[0])
    touched = [float(p.detach().float().sum()) for p in model.parameters()]  # every (mapped) weight resident
elif mode == "merge":
    from pathlib import Path
    from elmtune.cli.app import main
    sys.argv = ["elmtune", "merge", *args]
    try:
        main()
    except SystemExit as exit:
        result["exit"] = exit.code
    out = Path(args[args.index("-o") + 1])
    if out.is_dir():
        check = json.loads((out / "merge_report.json").read_text())["verification"]
        result["check"] = "off" if check is None else "passed"
result["seconds"] = time.perf_counter() - start
# VmHWM: this process image's own high-water mark (ru_maxrss would carry over the parent's from before exec)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
result["peak_mib"] = int(status["VmHWM"].split()[0]) / 1024
print(json.dumps(result))
"""

MODES = (
    ("in-memory", []),
    ("in-memory", ["--no-verify"]),
    ("low-memory", ["--low-memory"]),
    ("low-memory", ["--low-memory", "--no-verify"]),
)


def child(mode: str, *args: str) -> dict:
    """Run one child process; its last stdout line is a JSON dict with ``seconds`` and ``peak_mib``.

    A merge whose check fails still did all the work (merge and check), so it is measured and marked FAILED.
    """
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("exit") not in (None, 0):
        if "merge check failed" not in proc.stderr:
            raise SystemExit(f"elmtune merge {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        result["check"] = "FAILED"
    return result


def directory_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="270M,1_1B", help="comma-separated OpenELM presets (3B: about 12 GB f32)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "f32"], help="base checkpoint dtype (hub: bf16)")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank of the adapter")
    parser.add_argument(
        "--modes", default="in-memory,low-memory", help="which merges to run (in-memory needs the whole base in RAM)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the checkpoints (default: /tmp)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    modes = set(args.modes.split(","))
    if not modes or not modes <= {"in-memory", "low-memory"}:
        parser.error(f"--modes takes in-memory and/or low-memory, got {args.modes!r}")
    command = f"python benchmarks/merge_memory.py --presets {args.presets} --dtype {args.dtype} --rank {args.rank}" + (
        "" if modes == {"in-memory", "low-memory"} else f" --modes {args.modes}"
    )
    console = Console(width=120)
    table = Table(title=f"elmtune merge: peak RSS and wall time ({args.dtype} base, LoRA r {args.rank} on apple)")
    for column in ("preset", "run", "check", "peak RSS MiB", "over floor MiB", "x largest tensor", "wall s"):
        table.add_column(column, justify="left" if column in ("preset", "run", "check") else "right", no_wrap=True)
    dtype = {"bf16": "bfloat16", "f32": "float32"}[args.dtype]
    floor = child("import")["peak_mib"]
    table.add_row("-", "import (floor)", "-", f"{floor:.0f}", "0", "-", "-")
    notes = []
    for preset in args.presets.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"merge-bench-{preset}-", dir=args.workdir))
        try:
            base, adapter = root / "base", root / "adapter"
            built = child("build", preset, dtype, str(base), str(adapter), str(args.rank))
            largest = built["largest_tensor"] / 2**20
            notes.append(
                f"{preset}: {built['parameters'] / 1e6:.0f}M parameters, checkpoint {directory_mib(base):.0f} MiB, "
                f"largest tensor {largest:.0f} MiB, adapter {directory_mib(adapter):.1f} MiB"
            )
            if "in-memory" in modes:
                loaded = child("load", str(base))
                table.add_row(
                    preset,
                    "load_model",
                    "-",
                    f"{loaded['peak_mib']:.0f}",
                    f"{loaded['peak_mib'] - floor:.0f}",
                    f"{(loaded['peak_mib'] - floor) / largest:.1f}",
                    f"{loaded['seconds']:.1f}",
                )
            for label, options in MODES:
                if label not in modes:
                    continue
                out = root / "merged"
                stats = child("merge", str(base), str(adapter), "-o", str(out), "--overwrite", *options)
                over = stats["peak_mib"] - floor
                table.add_row(
                    preset,
                    f"merge {label}",
                    stats["check"],
                    f"{stats['peak_mib']:.0f}",
                    f"{over:.0f}",
                    f"{over / largest:.1f}",
                    f"{stats['seconds']:.1f}",
                )
                shutil.rmtree(out, ignore_errors=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        table.add_section()
    console.print(table)
    for note in notes:
        console.print(note)
    console.print(f"command: {command}")


if __name__ == "__main__":
    main()

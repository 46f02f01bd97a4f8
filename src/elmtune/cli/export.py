"""``elmtune export MODEL_DIR --format gguf -o model.gguf``: one file that llama.cpp (and Ollama, LM Studio) runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from elmtune.cli.options import OutputOpt, OverwriteOpt, ProgressOpt


class ExportFormat(str, Enum):
    """Output formats of ``elmtune export``."""

    gguf = "gguf"


class OutType(str, Enum):
    """Storage type of the weight matrices (norms always stay f32)."""

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"


def export(
    model_dir: Annotated[
        Path,
        typer.Argument(
            help="OpenELM checkpoint directory (config.json + model.safetensors or shards), e.g. from `elmtune merge`.",
            show_default=False,
        ),
    ],
    output: OutputOpt,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Output format.")] = ExportFormat.gguf,
    outtype: Annotated[
        OutType, typer.Option("--outtype", help="Weight storage: f32, f16, bf16 or q8_0 (norms stay f32).")
    ] = OutType.f16,
    name: Annotated[
        str | None, typer.Option("--name", help="general.name in the file (default: from the directory).")
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Run the file with llama.cpp and compare next-token logits with elmtune's (needs llama-cpp-python).",
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Export MODEL_DIR to GGUF in llama.cpp's OpenELM layout, with the Llama-2 vocabulary (OpenELM checkpoints only).

    Other architectures (which merge and inspect accept) are refused: use llama.cpp's own converter for them.

    The file is written under a hidden temporary name next to -o and renamed only when complete: any failure leaves
    -o as it was.
    """
    from rich.console import Console

    from elmtune.models.gguf import export_gguf
    from elmtune.models.gguf_check import check_gguf, require_llama_cpp

    if check:
        require_llama_cpp()  # fail before the export, not after it
    console = Console()
    report = export_gguf(model_dir, output, outtype.value, name=name, progress=progress, overwrite=overwrite)
    types = ", ".join(f"{count} {kind}" for kind, count in sorted(report.type_counts.items()))
    console.print(
        f"wrote {report.path} ({fmt.value}, {report.outtype}): {report.file_bytes / 2**20:.1f} MiB, "
        f"{len(report.tensor_types)} tensors ({types}), {report.parameter_count:,} parameters, "
        f"in {report.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"vocabulary: {report.tokenizer}", highlight=False, soft_wrap=True)
    if check:
        result = check_gguf(report.path, model_dir)
        console.print(
            f"llama.cpp check over {result.num_tokens} tokens: max |logit diff| {result.max_abs_diff:.3g} "
            f"(mean {result.mean_abs_diff:.3g}, logits up to {result.logit_range:.3g}), "
            f"top-1 agreement {result.top1_agreement:.1%}, "
            f"tokenization {'identical' if result.tokenization_match else 'DIFFERENT'}",
            highlight=False,
            soft_wrap=True,
        )

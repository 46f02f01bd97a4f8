"""Copy-paste examples that end each command's ``--help`` (the ``epilog`` of its registration in the app)."""

from __future__ import annotations

EXAMPLES: dict[str, tuple[str, ...]] = {
    "inspect": (
        "elmtune inspect 270M",
        "elmtune inspect apple/OpenELM-270M --adapter runs/lora/final",
    ),
    "train": (
        "elmtune train --config openelm-270M-lora-commonsense -o runs/lora",
        "elmtune train -m tiny -d data.jsonl --max-steps 100 -o runs/tiny --num-processes 2",
    ),
    "plan": (
        "elmtune plan openelm-270M-lora-commonsense --device cuda:8GB",
        "elmtune plan -m 3B --batch-size 4 --max-length 1024 --base-dtype nf4 --device cuda:24GB --json",
    ),
    "eval": (
        "elmtune eval 270M --adapter runs/lora/final --compare base --data LLM-Adapters/dataset --limit 500",
        "elmtune eval 270M --adapter runs/dpo/final --protocol preference --data held_out_pairs.jsonl",
    ),
    "export": ("elmtune export merged/ --format gguf --outtype q8_0 -o openelm-270m.Q8_0.gguf",),
    "merge": ("elmtune merge apple/OpenELM-270M runs/lora/final -o merged/ --dtype bf16",),
    "merge-adapters": ("elmtune merge-adapters runs/a/final runs/b/final --weights 0.6,0.4 --method svd -o combined/",),
    "generate": (
        'elmtune generate merged/ --prompt "Name three uses of a paperclip."',
        "elmtune generate merged/ --input prompts.jsonl --output replies.jsonl --max-new-tokens 128",
    ),
    "chat": ('elmtune chat merged/ --system "You are a concise assistant."',),
    "build": (
        "elmtune build build-assistant-tiny -o builds/assistant-tiny",
        "elmtune build build-commonsense-expert -o builds/expert --dry-run",
    ),
    "push": ("elmtune push runs/commonsense/final me/openelm-270m-commonsense-lora --private",),
    "report": ("elmtune report runs/sft",),
    "quickstart": (
        "elmtune quickstart",
        "elmtune quickstart --model apple/OpenELM-270M -o quickstart-270m",
    ),
    "recipes": ("elmtune recipes",),
}
"""Command name -> one or two example command lines (kept short: a terminal wraps longer ones)."""


def epilog(command: str) -> str:
    """The ``--help`` epilog of ``command``: its examples, one paragraph each (Typer joins single line breaks).

    Args:
        command: A registered command name.

    Returns:
        ``"Examples:"`` followed by the command's example lines.

    Raises:
        KeyError: ``command`` has no examples (every command must have some).
    """
    lines = EXAMPLES[command]
    title = "Example:" if len(lines) == 1 else "Examples:"
    return "\n\n".join([title, *(f"  {line}" for line in lines)])


__all__ = ["EXAMPLES", "epilog"]

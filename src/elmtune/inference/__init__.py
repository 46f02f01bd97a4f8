"""Talking to a model: OpenELM-Instruct's chat format, streamed generation, batch replies and an interactive chat.

Entry points: :func:`run_generate` (what ``elmtune generate`` calls), :func:`run_chat` (``elmtune chat``),
:func:`generate_reply` / :func:`generate_replies` (a model already in memory) and :class:`ChatSession`.

Submodules: ``settings`` and ``request`` (what to do; no torch), ``prompts`` (the chat format and tokenisation),
``loading``, ``streaming`` (text pieces as tokens arrive), ``generator``, ``prompt_file`` (batch mode's JSONL files),
``run`` and ``chat``. The names below load on first use, so ``import elmtune.inference.settings`` stays light.
"""

from elmtune.lazy_exports import export_names, lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "chat": ("ChatSession", "run_chat"),
    "generator": ("Reply", "generate_replies", "generate_reply"),
    "loading": ("load_for_generation",),
    "prompt_file": ("PromptRow", "read_prompt_rows"),
    "prompts": ("Prompt", "chat_prompt_text", "encode_prompt"),
    "request": ("GenerationRequest", "ModelSource"),
    "run": ("GenerationResult", "run_generate"),
    "settings": ("DecodingSettings",),
    "streaming": ("TextPieceStreamer",),
}

__all__ = export_names(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Hugging Face model cards (``README.md``): YAML front matter between ``---`` lines, then a Markdown body.

Both cards elmtune writes use these helpers: the adapter card of a run's ``final/`` and the merged-model card.
"""

from __future__ import annotations

from typing import Any

import yaml

CARD_FILE = "README.md"
"""The model card's file name in an adapter or merged directory (what the Hub shows)."""
_FENCE = "---"


def front_matter(fields: dict[str, Any]) -> str:
    """The card's metadata block: ``fields`` as YAML (in the given order) between two ``---`` lines."""
    return "\n".join([_FENCE, yaml.safe_dump(fields, sort_keys=False).rstrip(), _FENCE])


def read_front_matter(text: str) -> dict[str, Any] | None:
    """The metadata of a card's text, or None when it does not open with a YAML mapping between ``---`` lines."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != _FENCE:
        return None
    try:
        end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == _FENCE)
        fields = yaml.safe_load("\n".join(lines[1:end]))
    except (StopIteration, yaml.YAMLError):
        return None
    return fields if isinstance(fields, dict) else None


def bullet_lines(items: list[tuple[str, Any]]) -> list[str]:
    """Markdown ``- name: value`` lines, leaving out values that are None or empty."""
    return [f"- {name}: {value}" for name, value in items if value not in (None, [], {})]


__all__ = ["CARD_FILE", "bullet_lines", "front_matter", "read_front_matter"]

"""Files shipped inside the package: the recipes (``elmtune recipes`` lists them) and the sample data they train on.

A configuration file can be named by a shipped recipe's name (``--config tiny-lora-commonsense``), and a recipe names
a shipped data file as ``elmtune:samples/<file>``; both resolve to the installed package's files, so the recipes run
from an installed wheel in any working directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmtune.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES_DIR = PACKAGE_DIR / "recipes"
SAMPLES_DIR = PACKAGE_DIR / "samples"
SHIPPED_PREFIX = "elmtune:"
"""A recipe value ``elmtune:PATH`` names the file ``PATH`` inside the installed package (``elmtune:samples/...``)."""


@dataclass(frozen=True)
class ShippedRecipe:
    """A recipe shipped with the package.

    Attributes:
        name: The file name without ``.yaml``: what ``--config NAME`` and ``elmtune build NAME`` accept.
        path: The installed file.
        summary: The first line of its leading comment: what it does, in one line.
    """

    name: str
    path: Path
    summary: str


def _summary(path: Path) -> str:
    """The first line of the file's leading comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text:
            return text
    return ""


def shipped_recipes() -> list[ShippedRecipe]:
    """The shipped recipes, sorted by name."""
    return [ShippedRecipe(path.stem, path, _summary(path)) for path in sorted(RECIPES_DIR.glob("*.yaml"))]


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe called ``name`` (``NAME`` or ``NAME.yaml``, no directory part); None when there is none."""
    if not name or "/" in name or "\\" in name:
        return None
    path = RECIPES_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return path if path.is_file() else None


def locate_config(path: str | Path) -> Path:
    """``path`` itself when it exists, else the shipped recipe of that name, else ``path`` (for the caller's error)."""
    given = Path(path)
    if given.exists():
        return given
    return shipped_recipe(str(path)) or given


def shipped_path(value: str, *, where: str) -> str:
    """The installed file that ``elmtune:PATH`` names.

    Args:
        value: ``elmtune:`` followed by a path inside the package (``samples/commonsense_train_sample200.json``).
        where: The configuration key and file, for the message.

    Raises:
        ConfigError: The package has no such file or directory.
    """
    relative = value[len(SHIPPED_PREFIX) :].lstrip("/")
    path = (PACKAGE_DIR / relative).resolve()
    if PACKAGE_DIR not in path.parents or not path.exists():
        available = ", ".join(sorted(p.name for p in SAMPLES_DIR.iterdir() if not p.name.startswith(("_", "."))))
        raise ConfigError(f"{where}: {value} is not a file shipped with elmtune (samples: {available})")
    return str(path)


def resolve_shipped_paths(value: Any, *, where: str) -> Any:
    """``value`` with every string ``elmtune:PATH`` inside it (mappings and lists included) replaced by its file."""
    if isinstance(value, str) and value.startswith(SHIPPED_PREFIX):
        return shipped_path(value, where=where)
    if isinstance(value, Mapping):
        return {key: resolve_shipped_paths(item, where=f"{where}: {key}") for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_shipped_paths(item, where=where) for item in value]
    return value


def portable_paths(value: Any) -> Any:
    """``value`` with every string naming a file inside the installed package written back as ``elmtune:PATH``.

    The inverse of :func:`resolve_shipped_paths` for what a build records: the same recipe gives the same values in
    every installation (another virtual environment, another checkout).
    """
    if isinstance(value, str):
        prefix = f"{PACKAGE_DIR}/"
        return SHIPPED_PREFIX + value[len(prefix) :] if value.startswith(prefix) else value
    if isinstance(value, Mapping):
        return {portable_paths(key): portable_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_paths(item) for item in value]
    return value


__all__ = [
    "RECIPES_DIR",
    "SAMPLES_DIR",
    "SHIPPED_PREFIX",
    "ShippedRecipe",
    "locate_config",
    "portable_paths",
    "resolve_shipped_paths",
    "shipped_path",
    "shipped_recipe",
    "shipped_recipes",
]

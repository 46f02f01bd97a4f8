"""Reading configuration YAML (recipes, ``--config`` files): PyYAML's safe loader, with numbers read as YAML 1.2 does.

PyYAML follows YAML 1.1, where ``1e-3`` (no dot) and ``1e5`` are strings; recipes write learning rates that way, so
this loader resolves them (and ``+1.5``, ``.5e-3``) as floats, as YAML 1.2 and most users expect. It also accepts a
UTF-8 byte-order mark and CRLF line ends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from elmtune.errors import ConfigError
from elmtune.shipped_files import locate_config, resolve_shipped_paths

_FLOAT = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3``-style scientific notation as a float."""


RecipeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_recipe_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (``None`` for an empty file).

    Raises:
        yaml.YAMLError: The file is not valid YAML.
    """
    return yaml.load(path.read_text(encoding="utf-8-sig"), Loader=RecipeLoader)  # noqa: S506 - a SafeLoader


def read_config_file(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The mapping at the top of a YAML configuration file (empty for an empty file).

    This is the one reader of configuration files: recipes (``elmtune train --config``), adapter configs and the
    ``--config`` files of ``elmtune eval`` and ``elmtune merge``. A path that does not exist but is the name of a
    shipped recipe (``tiny-lora-commonsense``) reads that recipe; every ``elmtune:PATH`` value names a file shipped
    inside the package (``elmtune:samples/...``) and is replaced by its path.

    Args:
        path: The file, or the name of a shipped recipe.
        what: What the file is, for messages (``recipe``, ``adapter config``...).

    Returns:
        The top-level mapping, as a fresh ``dict``.

    Raises:
        ConfigError: The file is missing, a directory, not valid YAML, or does not hold a mapping, or an
            ``elmtune:PATH`` value names no shipped file.
    """
    path = locate_config(path)
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"{what} {path} {state}; give the path of a YAML file or the name of a shipped recipe (elmtune recipes)"
        )
    try:
        data = load_recipe_yaml(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise ConfigError(f"{path} is not UTF-8 text: byte {byte:#04x} at offset {err.start}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value lines), got a {type(data).__name__}")
    return dict(resolve_shipped_paths(data, where=str(path)))


__all__ = ["RecipeLoader", "load_recipe_yaml", "read_config_file"]

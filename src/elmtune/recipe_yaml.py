"""Reading recipe YAML: PyYAML's safe loader, with numbers read as YAML 1.2 reads them.

PyYAML follows YAML 1.1, where ``1e-3`` (no dot) and ``1e5`` are strings; recipes write learning rates that way, so
this loader resolves them (and ``+1.5``, ``.5e-3``) as floats, as YAML 1.2 and most users expect. It also accepts a
UTF-8 byte-order mark and CRLF line ends.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

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


__all__ = ["RecipeLoader", "load_recipe_yaml"]

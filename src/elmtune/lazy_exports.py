"""Package attributes imported on first use (PEP 562), so that importing a light submodule stays light.

``import elmtune.datasets.config`` runs ``elmtune/datasets/__init__.py`` first; if that imported every submodule, a
torch-free config module would still pull in torch. With lazy exports, ``from elmtune.datasets import DataConfig``
imports only the submodule that defines ``DataConfig``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package whose public names load on first access.

    Args:
        package: The package's ``__name__``.
        exports: Submodule (relative to ``package``) -> the public names it provides.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's ``__init__``.
    """
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    def __dir__() -> list[str]:  # noqa: N807 - the PEP 562 hook
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__


def export_names(exports: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Every public name of ``exports``, sorted (a package's ``__all__``)."""
    return sorted(name for names in exports.values() for name in names)


__all__ = ["export_names", "lazy_exports"]

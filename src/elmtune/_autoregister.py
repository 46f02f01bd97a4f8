"""Register OpenELM with transformers' Auto classes without importing torch at ``import elmtune``.

``import elmtune`` must stay instant (the CLI's ``--help`` imports it), yet ``AutoConfig`` and
``AutoModelForCausalLM`` must resolve ``model_type="openelm"`` to elmtune's classes, with no ``trust_remote_code``,
as soon as a user reaches for them.

So: if transformers' auto modules are already imported, register now. Otherwise watch transformers' own imports
(a meta-path finder that wraps the loaders of ``transformers.*`` modules) and register at the first moment when an
auto module has been loaded and no transformers module is still executing. Registering earlier, from inside a
half-finished transformers import, would hit transformers' circular imports. elmtune's own modules are watched the
same way: registering imports ``elmtune.models.modeling`` and the modules it uses, so it must wait while any elmtune
module is still executing (``elmtune.models.layers`` imported first imports transformers before it defines the
classes ``elmtune.models.modeling`` takes from it). Once done, the finder removes itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_TRIGGERS = ("transformers.models.auto.configuration_auto", "transformers.models.auto.modeling_auto")


def _watched(fullname: str) -> bool:
    """Whether a module is one of transformers' or elmtune's: no registration while one of them executes."""
    return fullname.startswith(("transformers.", "elmtune."))


def _register() -> None:
    """Register OpenELM with the Auto classes (imports transformers and elmtune's model classes)."""
    from elmtune.models.registration import register

    register()


class _TrackedLoader(importlib.abc.Loader):
    """Delegates to a transformers module's loader and tells the watcher when the module starts and ends."""

    def __init__(self, loader: importlib.abc.Loader, watcher: _TransformersImportWatcher) -> None:
        self._loader = loader
        self._watcher = watcher

    def __getattr__(self, name: str) -> object:  # get_source, is_package...: the wrapped loader's
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        """Create the module as the wrapped loader does."""
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Execute the module with the wrapped loader, counting it as in progress; then let the watcher register."""
        self._watcher.depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            self._watcher.depth -= 1
        self._watcher.maybe_register()


class _TransformersImportWatcher(importlib.abc.MetaPathFinder):
    """Wraps the loaders of ``transformers.*`` and ``elmtune.*`` modules until OpenELM is registered."""

    def __init__(self) -> None:
        self.depth = 0
        self._registering = False

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        """The spec the other finders give a ``transformers.*`` module, its loader wrapped; None for anything else."""
        if not _watched(fullname) or self._registering:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _TrackedLoader(spec.loader, self)
                return spec
        return None

    def maybe_register(self) -> None:
        """Register and remove this finder once an auto module is loaded and no transformers import is running."""
        if self.depth or self._registering or not any(name in sys.modules for name in _TRIGGERS):
            return
        self._registering = True
        try:
            _register()
        finally:
            if self in sys.meta_path:
                sys.meta_path.remove(self)


def install() -> None:
    """Register now if transformers' auto modules are loaded, otherwise as soon as they are."""
    if any(name in sys.modules for name in _TRIGGERS):
        _register()
    elif not any(isinstance(finder, _TransformersImportWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportWatcher())

"""Config modules import neither torch nor transformers: reading and checking settings stays cheap."""

import subprocess
import sys

import pytest

CONFIG_MODULES = [
    "elmtune.finetune.config",
    "elmtune.adapters.config",
    "elmtune.datasets.config",
    "elmtune.evaluation.config",
    "elmtune.config_mapping",
    "elmtune.recipe_yaml",
    "elmtune.build.recipe",
    "elmtune.merging.options",
]
HEAVY = ("torch", "transformers", "peft", "accelerate")


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_config_module_loads_no_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"importing {module} loads {loaded}"


def test_lazy_package_exports_still_resolve():
    """``from elmtune.datasets import X`` keeps working although the package imports its submodules on first use."""
    import elmtune.adapters
    import elmtune.datasets
    import elmtune.evaluation

    for package in (elmtune.adapters, elmtune.datasets, elmtune.evaluation):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, f"{package.__name__} exports names it cannot provide: {missing}"
        assert set(package.__all__) <= set(dir(package))
    from elmtune.datasets import DataConfig
    from elmtune.datasets.config import DataConfig as Defined

    assert DataConfig is Defined

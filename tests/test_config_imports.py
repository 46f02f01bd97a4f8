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
    "elmtune.models.presets",
    "elmtune.models.geometry",
    "elmtune.models.model_names",
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
    import elmtune.merging
    import elmtune.models

    for package in (elmtune.adapters, elmtune.datasets, elmtune.evaluation, elmtune.merging, elmtune.models):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, f"{package.__name__} exports names it cannot provide: {missing}"
        assert set(package.__all__) <= set(dir(package))
    from elmtune.datasets import DataConfig
    from elmtune.datasets.config import DataConfig as Defined

    assert DataConfig is Defined


def test_planning_a_build_loads_no_torch(tmp_path):
    """A dry run fingerprints every stage (data digests included) without torch, so a rebuilt-nothing run is quick."""
    code = (
        "import sys\n"
        "from elmtune.build.recipe import load_build_recipe\n"
        "from elmtune.build.run import run_build\n"
        f"run_build(load_build_recipe('build-assistant-tiny'), {str(tmp_path / 'b')!r}, dry_run=True, say=print)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]", out
    assert out.count(": run (") == 6  # the plan really covered every stage

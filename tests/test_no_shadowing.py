"""Our ``datasets`` and ``adapters`` are subpackages of elmtune and never shadow the PyPI packages."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _inside_repo_source(path: str) -> bool:
    resolved = Path(path).resolve()
    return ROOT in resolved.parents and "site-packages" not in resolved.parts


def test_import_datasets_is_hugging_face():
    import datasets

    assert hasattr(datasets, "load_dataset") and hasattr(datasets, "Dataset")
    assert not _inside_repo_source(datasets.__file__)


def test_elmtune_subpackages_are_namespaced():
    import elmtune.adapters
    import elmtune.datasets

    assert elmtune.datasets.__name__ == "elmtune.datasets" and elmtune.adapters.__name__ == "elmtune.adapters"


def test_no_top_level_packages_that_shadow_libraries():
    for name in ("datasets", "adapters"):
        assert not (ROOT / name / "__init__.py").exists()
        assert not (ROOT / "tests" / name / "__init__.py").exists()
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            assert not _inside_repo_source(spec.origin)

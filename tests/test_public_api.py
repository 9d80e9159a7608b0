"""Each module's ``__all__`` is sorted and complete, and the package's top-level names are pinned."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import bge_rerank_integrations
import haystack_integrations.components.rankers.bge_reranker as haystack_ranker

PACKAGE_ROOTS = [bge_rerank_integrations, haystack_ranker]


def _ruff_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def _modules() -> list[str]:
    names = []
    for root in PACKAGE_ROOTS:
        names.append(root.__name__)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_all_is_sorted_and_names_every_public_definition(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert exported == sorted(exported, key=_ruff_order), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module lacks: {missing}"
    defined_here = [
        n
        for n, value in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == name
    ]
    unexported = sorted(set(defined_here) - set(exported))
    assert not unexported, f"{name} defines public {unexported} outside __all__ (export them or add a _)"


def test_the_top_level_names_are_pinned() -> None:
    # A change here is a change of the public API: make it on purpose, with the README.
    assert bge_rerank_integrations.__all__ == [
        "DEFAULT_MODEL",
        "ModelLoadError",
        "RemoteBackendError",
        "RerankError",
        "RerankResult",
        "Reranker",
        "RerankerConfig",
    ]
    assert haystack_ranker.__all__ == ["BGERanker"]

"""Lazy re-exports for package `__init__`s: `from raycls.train import fit` imports the module
that defines `fit` only then, so importing a pure module (config, a search space) never pulls
in torch or Ray through its package."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that resolves each of `names` (name -> submodule) on first use."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    return __getattr__

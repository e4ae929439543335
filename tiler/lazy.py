"""Lazy public names for packages (PEP 562): a name's module is imported the first time the name is used.

``import tiler`` or ``import tiler.model.sources.detect`` then costs milliseconds, not the seconds that
torch, MONAI, dask and scipy take to import, which a driver that only plans never needs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose public names live in submodules.

    Args:
        package: The package's ``__name__``.
        names: Public name -> ``"module"`` (the same name there) or ``"module:attribute"``.

    >>> getattr_, dir_ = lazy_names("tiler", {"Window": "tiler.geometry"})
    >>> getattr_("Window").__name__
    'Window'
    """

    def __getattr__(name: str) -> Any:
        try:
            module, _, attribute = names[name].partition(":")
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attribute or name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__

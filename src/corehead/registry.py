"""Registries of methods users pick by name (ablation modes, KV methods, hybrid selectors, task metrics).

As kvpress does for its presses: a method is a small class, registered by a decorator in the module that
defines it. A registry knows the package its methods live in and imports every module of it on first
use, so adding a method is one new file in that package and no edit elsewhere; the CLI's help texts and
validation read `names()`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> class of one kind of method, filled by `@registry.register("name")` in `package`'s modules."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self._classes: dict[str, type[T]] = {}
        self._order: dict[str, float] = {}
        self._loaded = False

    def register(self, name: str, order: float = 100.0) -> Callable[[type[T]], type[T]]:
        """Class decorator: make the class available under `name` (sets its `name` attribute); `order`
        places it among the others in `names()` (then by name)."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"two {self.kind}s are registered as {name!r}")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            self._order[name] = order
            return cls

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            module = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(module.__path__):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> tuple[str, ...]:
        """Every registered name, by `order`, then by name."""
        self._load()
        return tuple(sorted(self._classes, key=lambda n: (self._order[n], n)))

    def get(self, name: str) -> type[T]:
        """The class registered as `name`; an unknown name is an error listing the known ones."""
        self._load()
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.help()}")
        return self._classes[name]

    def help(self) -> str:
        """The names as a comma list, for help texts."""
        return ", ".join(self.names())

"""One registry helper for everything chosen by name in a config: methods, classifiers, datasets.

A :class:`Registry` maps names to objects (classes or builder functions). Plugins register themselves with
:meth:`Registry.register` when their module is imported; :meth:`Registry.get` refuses an unknown name with an
error that names the config key, suggests the closest name and lists the valid ones. (timm's
``models/_registry.py`` is the model: one table, filled by decorators, read by name.)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind; ``key`` is the config key that chooses among them (for error messages)."""

    def __init__(self, kind: str, key: str, error: type[Exception] = ConfigError) -> None:
        self.kind, self.key, self.error = kind, key, error
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Add ``obj`` under ``name``; a missing or repeated name is a programming error (ValueError)."""
        if not name or name in self._items:
            raise ValueError(f"{self.kind} name {name!r} missing or registered twice")
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator(name)``: register the decorated object under ``name``."""
        return lambda obj: self.register(name, obj)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name raises ``error`` naming the key, the closest valid
        name and every valid one."""
        if name not in self._items:
            hint = difflib.get_close_matches(str(name), self.names(), n=1)
            extra = f"; did you mean {hint[0]}?" if hint else ""
            raise self.error(f"{self.key}: unknown {self.kind} {name!r}{extra} (choose one of "
                             f"{', '.join(self.names())})")
        return self._items[name]

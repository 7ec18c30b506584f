"""A tiny name -> object registry with "did you mean" errors (pattern of lm-eval's registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from reflectevo.errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; entries may be registered lazily as 'module:attr' strings."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str | None = None) -> Callable[[T], T] | None:
        """Register `entry` under `name`, or use as a decorator when `entry` is omitted."""
        if entry is not None:
            self._add(name, entry)
            return None

        def deco(obj: T) -> T:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, entry: T | str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def get(self, name: str, where: str = "") -> T:
        if name not in self._entries:
            raise unknown(self.kind, name, self._entries, where)
        entry = self._entries[name]
        if isinstance(entry, str):  # lazy "module:attr"
            import importlib

            mod, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(mod), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

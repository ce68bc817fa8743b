"""An explicit name -> object registry that refuses duplicate names.

DomainBed looks its algorithms and datasets up in module ``globals()``; we keep our own
explicit registries and copy them into DomainBed in :mod:`lpa_domainbed.registration`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Mapping
from typing import Callable, Generic, TypeVar

__all__ = ["Registry", "owner", "taken_in"]

T = TypeVar("T")


def owner(obj) -> str:
    """Who defined ``obj``, for a clash message: DomainBed, this package, or a plugin."""
    if isinstance(obj, types.ModuleType):
        return f"the module {obj.__name__}"
    module = getattr(obj, "__module__", None) or "?"
    name = f"{module}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    if module.split(".")[0] == "domainbed":
        return f"DomainBed's built-in {name}"
    if module.split(".")[0] == "lpa_domainbed":
        return f"lpa_domainbed's {name}"
    return f"{name} (module {module})"


def taken_in(module_name: str) -> Callable[[str, object], str | None]:
    """A ``reserved`` check: who owns ``name`` in the (already imported) module, if not ``obj``.

    Reads ``sys.modules`` only, so a registry stays usable (and cheap) before DomainBed is
    imported; :mod:`lpa_domainbed.registration` checks again when it copies the names over.
    """

    def check(name, obj):
        module = sys.modules.get(module_name)
        existing = getattr(module, "__dict__", {}).get(name)
        return None if existing is None or existing is obj else owner(existing)

    return check


class Registry(Mapping, Generic[T]):
    """Ordered mapping of names to objects of one kind (algorithms, datasets, launchers).

    >>> reg = Registry("algorithm")
    >>> @reg.register("Mine")
    ... class Mine: ...
    >>> list(reg)
    ['Mine']
    """

    def __init__(self, kind: str, reserved: Callable[[str, T], str | None] | None = None):
        """``reserved(name, obj)`` returns who else owns ``name`` (refused), or ``None``."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._reserved = reserved

    def add(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name {name!r} must be a Python identifier")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is already registered by {owner(self._items[name])}; "
                f"pick another name")
        taken = self._reserved(name, obj) if self._reserved else None
        if taken:
            raise ValueError(f"cannot register {self.kind} {name!r}: the name is taken by "
                             f"{taken}; pick another name")
        self._items[name] = obj
        return obj

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; the name defaults to the object's ``__name__``."""

        def decorator(obj: T) -> T:
            return self.add(name or obj.__name__, obj)

        return decorator

    def discard(self, name: str) -> None:
        """Forget ``name`` (a registration DomainBed refused); no error when absent."""
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self._items) or 'none'}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"

"""One way to name things: the registry behind attacks, architectures, datasets and defenses.

A name a user types is matched case-insensitively with spaces, dashes and underscores ignored,
against the canonical names and their aliases; an unknown name gets one line listing the valid
ones. A `Registry` is a read-only mapping from canonical name to the registered item, so code
that iterates or indexes it by canonical name reads it like a dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from bd_core.errors import BdError

T = TypeVar("T")


def squash(name: str) -> str:
    """The form names are compared in: 'Fashion_MNIST', 'fashion-mnist', 'fashionmnist' agree."""
    return "".join(name.split()).lower().replace("-", "").replace("_", "")


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, kind: str, hint: str = "", sort_valid: bool = False) -> None:
        self.kind = kind  # 'attack', 'architecture', ...: the error says "unknown <kind>"
        self.hint = hint  # appended to the list of valid names (e.g. the aliases worth knowing)
        self.sort_valid = sort_valid  # list valid names sorted, not in registration order
        self._items: dict[str, T] = {}
        self._keys: dict[str, str] = {}  # squashed name or alias -> canonical name

    def add(self, name: str, item: T, aliases: Iterable[str] = ()) -> T:
        self._items[name] = item
        for key in (name, *aliases):
            self._keys[squash(key)] = name
        return item

    def alias(self, alias: str, name: str) -> None:
        if name not in self._items:
            raise KeyError(f"cannot alias {alias!r} to unregistered {self.kind} {name!r}")
        self._keys[squash(alias)] = name

    def pop(self, name: str, default: T | None = None) -> T | None:
        """Unregister `name` and its aliases (e.g. a plugin a test registered)."""
        self._keys = {k: v for k, v in self._keys.items() if v != name}
        return self._items.pop(name, default)

    def canonical(self, name: str) -> str:
        """The canonical name of `name`, or one BdError that lists the valid names."""
        key = self._keys.get(squash(name)) if isinstance(name, str) else None
        if key is None:
            valid = sorted(self._items) if self.sort_valid else list(self._items)
            raise BdError(f"unknown {self.kind} {name!r}; valid: {', '.join(valid)}{self.hint}")
        return key

    def lookup(self, name: str) -> T:
        """The item registered under `name` or one of its aliases."""
        return self._items[self.canonical(name)]

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

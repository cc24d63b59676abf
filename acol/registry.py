"""A tiny name -> builder registry (timm / torchvision style)."""
from __future__ import annotations

from typing import Callable


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])        # a plain KeyError would print its message in quotes


class Registry:
    """Maps names to builders; unknown names raise with the list of valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def decorator(builder: Callable) -> Callable:
            if name in self._builders:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable:
        if name not in self._builders:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}")
        return self._builders[name]

    def names(self) -> list[str]:
        return sorted(self._builders)

    def names_in_order(self) -> list[str]:
        """The names in registration order."""
        return list(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

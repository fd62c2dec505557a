"""One flat registry per kind of algorithm piece (loss, advantage estimator, KL estimator, ...).

Every variant is chosen by name; an unknown name raises an error listing the valid ones.

    >>> from alignment.algorithms import registry
    >>> @registry.register("preference", "sigmoid")
    ... def sigmoid_loss(...): ...
    >>> registry.get("preference", "sigmoid")
"""

from __future__ import annotations

from typing import Callable, Dict, List, TypeVar

F = TypeVar("F", bound=Callable)

_REGISTRIES: Dict[str, Dict[str, Callable]] = {}

__all__ = ["register", "get", "available", "kinds"]


def register(kind: str, name: str, *aliases: str) -> Callable[[F], F]:
    """Decorator registering ``fn`` under ``kind``/``name`` (and optional aliases).

    Registering the same name twice in one kind is an error (it would silently shadow a loss).
    """

    def deco(fn: F) -> F:
        table = _REGISTRIES.setdefault(kind, {})
        for key in (name, *aliases):
            if key in table and table[key] is not fn:
                raise ValueError(f"{kind} '{key}' is already registered by {table[key].__qualname__}")
            table[key] = fn
        return fn

    return deco


def get(kind: str, name: str) -> Callable:
    """Return the function registered as ``name`` in ``kind``; unknown names list the valid ones."""
    if kind not in _REGISTRIES:
        raise KeyError(f"unknown algorithm kind '{kind}'; valid kinds: {', '.join(sorted(_REGISTRIES))}")
    table = _REGISTRIES[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} name '{name}'; valid names: {', '.join(sorted(table))}")
    return table[name]


def available(kind: str) -> List[str]:
    """Sorted registered names of ``kind`` (aliases included)."""
    if kind not in _REGISTRIES:
        raise KeyError(f"unknown algorithm kind '{kind}'; valid kinds: {', '.join(sorted(_REGISTRIES))}")
    return sorted(_REGISTRIES[kind])


def kinds() -> List[str]:
    return sorted(_REGISTRIES)

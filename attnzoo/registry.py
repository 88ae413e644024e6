"""One small registry, used for attention blocks and for backbones.

A registry maps a short lowercase name to a factory (a class, a function or a
``functools.partial``) plus free-form metadata (family, paper, year, ...).
Lookups of unknown names raise a ``KeyError`` that lists the closest names.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = ["Registry", "RegistryEntry", "accepted_kwargs"]


@dataclass(frozen=True)
class RegistryEntry:
    """A registered factory and what is known about it."""

    name: str
    factory: Callable[..., Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        """Keyword defaults of the factory (partial keywords included), ``channels`` excluded."""
        return default_kwargs(self.factory)


def _signature_target(factory: Callable[..., Any]) -> Callable[..., Any]:
    return factory.func if isinstance(factory, functools.partial) else factory


def default_kwargs(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments a factory takes with their defaults (partials applied)."""
    target = _signature_target(factory)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return {}
    out = {
        n: p.default
        for n, p in params.items()
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if isinstance(factory, functools.partial):
        out.update(factory.keywords)
    return out


def accepted_kwargs(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """Names of the keyword arguments a factory accepts, and whether it takes ``**kwargs``."""
    target = _signature_target(factory)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return [], True
    names = [
        n
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("self", "channels")
    ]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return names, var_kw


class Registry:
    """Name -> factory + metadata, with timm-style wildcard listing.

    ``kind`` is the noun used in error messages ("attention block", "backbone").
    """

    def __init__(self, kind: str, lister: str) -> None:
        self.kind = kind
        self.lister = lister  # e.g. "attnzoo.list_attn()", named in error messages
        self._entries: dict[str, RegistryEntry] = {}

    # -- registration -------------------------------------------------------
    def register(self, name: str, factory: Callable[..., Any], **metadata: Any) -> Callable[..., Any]:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} names must be non-empty strings without spaces, got {name!r}")
        if name in self._entries:
            other = self._entries[name].factory
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {_describe(other)}); "
                f"choose another name or unregister the old one first"
            )
        if not callable(factory):
            raise TypeError(f"cannot register {name!r}: {factory!r} is not callable")
        self._entries[name] = RegistryEntry(name, factory, dict(metadata))
        return factory

    def unregister(self, name: str) -> RegistryEntry:
        return self._entries.pop(self._resolve_name(name))

    # -- lookup -------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[RegistryEntry]:
        return iter(self._entries[n] for n in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> RegistryEntry:
        return self._entries[self._resolve_name(name)]

    def names(self, filter: str | list[str] = "*", **metadata: Any) -> list[str]:
        patterns = [filter] if isinstance(filter, str) else list(filter)
        out = []
        for n in sorted(self._entries):
            if not any(fnmatch.fnmatchcase(n, p) for p in patterns):
                continue
            meta = self._entries[n].metadata
            if all(v is None or meta.get(k) == v for k, v in metadata.items()):
                out.append(n)
        return out

    def _resolve_name(self, name: str) -> str:
        if name in self._entries:
            return name
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = ""
        if close:
            quoted = [repr(c) for c in close]
            hint = "; did you mean " + (" or ".join(quoted) if len(quoted) < 3 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"
        raise KeyError(
            f"unknown {self.kind} {name!r}{hint} ({self.lister} lists all {len(self._entries)})"
        )


def _describe(obj: Any) -> str:
    target = _signature_target(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"

"""One registry shape for everything built by name: losses, models, datasets.

    from gence.registry import Registry
    MODELS = Registry("model")

    @MODELS.register("small_cnn", "a 3-layer CNN for fast runs")
    def small_cnn(in_channels, num_classes, image_size, **params): ...

    MODELS.get("small_cnn").builder(...)   # the registered callable
    MODELS.available()                     # {"small_cnn": "a 3-layer CNN for fast runs"}

Each package keeps its own ``build(name, ...)`` (its arguments differ: a loss needs class counts, a
model the input shape) and exposes ``available() -> dict[str, str]`` (name -> one-line description),
``register`` and the registry itself. Adding a loss, model or dataset is one decorated function.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

__all__ = ["Entry", "Registry", "check_keywords", "keyword_names"]


@dataclass(frozen=True)
class Entry:
    """A registered name: its ``builder``, a one-line ``description`` and free-form ``info``
    (what the package needs to validate or build it, e.g. parameter checkers)."""

    name: str
    builder: Callable[..., Any]
    description: str
    info: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Names of one ``kind`` of thing ("loss", "model", "dataset") mapped to their builders."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str = "", **info: Any) -> Callable[[Callable], Callable]:
        """Decorator: register the decorated callable under ``name``; returns it unchanged.

        Raises ValueError if ``name`` is already taken (a second registration would silently
        replace the first, and which one wins would depend on import order)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name={name!r} is not valid; expected a non-empty string")

        def decorator(builder: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} name={name!r} is already registered")
            self._entries[name] = Entry(name, builder, description, dict(info))
            return builder

        return decorator

    def get(self, name: str) -> Entry:
        """The entry of ``name``; ValueError naming the valid names if it is unknown."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} name={name!r}; expected one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def available(self) -> dict[str, str]:
        """Registered names (sorted) with their one-line descriptions."""
        return {name: self._entries[name].description for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def keyword_names(builder: Callable, skip: Iterable[str] = (),
                  forwards_to: Iterable[Callable] = ()) -> tuple[str, ...] | None:
    """The parameter names ``builder`` (a function or a class) takes by keyword, less ``skip``.

    A builder that takes ``**kwargs`` passes them on to the callables ``forwards_to`` (an entry's
    ``info["forwards_to"]``), whose keyword names count too; without any, it takes any name: None.
    Lets a package check parameters before building."""
    skipped = set(skip)
    names: list[str] = []
    for fn in (builder, *forwards_to):
        params = inspect.signature(fn).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in skipped and p.name not in names]
        if fn is builder and not forwards_to and any(p.kind is p.VAR_KEYWORD for p in params):
            return None
    return tuple(names)


def check_keywords(what: str, params: Mapping[str, Any], valid: Iterable[str] | None) -> None:
    """ValueError naming ``what`` (e.g. ``"model 'resnet20'"``), each parameter of ``params`` that is
    not in ``valid`` with its value, and the valid names. ``valid=None`` accepts any name."""
    if valid is None:
        return
    valid = tuple(valid)
    unknown = [f"{k}={v!r}" for k, v in params.items() if k not in valid]
    if unknown:
        expected = f"expected some of: {', '.join(valid)}" if valid else "it takes no parameters"
        raise ValueError(f"{what}: unknown parameter {', '.join(unknown)}; {expected}")

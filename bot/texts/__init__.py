"""The bot's texts: jinja2 macros in one file per language (en.j2), rendered by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

# Rendered texts kept for reuse: those whose every argument is a plain value or a frozen
# dataclass of plain values (a plan), so the same arguments always render the same (the
# greeting with its plan list is rendered for every new visitor's first message).
CACHE_SIZE = 1024
_rendered: dict[tuple[Any, ...], str] = {}
_PLAIN = (str, int, float, bool, type(None))
_frozen_keys: dict[int, tuple[Any, tuple[Any, ...]]] = {}


@cache
def _module(lang: str) -> Any:
    env = Environment(loader=PackageLoader("bot", "texts"), autoescape=False,
                      undefined=StrictUndefined, lstrip_blocks=True,
                      keep_trailing_newline=False)
    env.globals["words"] = _words
    return env.get_template(f"{lang}.j2").module


def text(key: str, /, *, lang: str = "en", **context: Any) -> str:
    """Render one text by name, e.g. text("vin_invalid", reason=...)."""
    cache_key = _cache_key(lang, key, context)
    if cache_key is not None:
        found = _rendered.get(cache_key)
        if found is not None:
            return found
    rendered = str(getattr(_module(lang), key)(**context)).strip()
    if cache_key is not None:
        if len(_rendered) >= CACHE_SIZE:
            _rendered.clear()
        _rendered[cache_key] = rendered
    return rendered


class _Unsettled(Exception):
    """An argument that may change (an ORM object, a list): rendered each time."""


def _cache_key(lang: str, key: str, context: Mapping[str, Any]) -> tuple[Any, ...] | None:
    try:
        return (lang, key, *((name, _settled(value)) for name, value in context.items()))
    except _Unsettled:
        return None


def _settled(value: Any) -> Any:
    """A value that stands for `value` in a cache key (its type too: True and 1 render
    differently), if `value` cannot change."""
    if isinstance(value, _PLAIN):
        return type(value), value
    kept = _frozen_keys.get(id(value))  # first: a plan, say (Mapping is an ABC, slower)
    if kept is not None and kept[0] is value:
        return kept[1]
    if isinstance(value, Mapping):
        return dict, tuple((_settled(k), _settled(v)) for k, v in value.items())
    params = getattr(type(value), "__dataclass_params__", None)
    if params is not None and params.frozen:
        settled = type(value), tuple(_settled(getattr(value, field.name))
                                     for field in dataclasses.fields(value))
        # A frozen dataclass of plain values cannot change: its key is worked out once (the
        # object is held, so its id is not reused by another meanwhile).
        if len(_frozen_keys) >= CACHE_SIZE:
            _frozen_keys.clear()
        _frozen_keys[id(value)] = (value, settled)
        return settled
    raise _Unsettled


def _words(*parts: Any) -> str:
    """The parts given, blanks left out, joined by spaces ("2015 Honda Civic")."""
    return " ".join(str(part) for part in parts if part)

"""The bot's texts: jinja2 macros in one file per language (en.j2), rendered by name."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined


@cache
def _module(lang: str) -> Any:
    env = Environment(loader=PackageLoader("bot", "texts"), autoescape=False,
                      undefined=StrictUndefined, lstrip_blocks=True,
                      keep_trailing_newline=False)
    return env.get_template(f"{lang}.j2").module


def text(key: str, /, *, lang: str = "en", **context: Any) -> str:
    """Render one text by name, e.g. text("vin_invalid", reason=...)."""
    macro = getattr(_module(lang), key)
    return str(macro(**context)).strip()

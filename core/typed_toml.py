"""Settings read from TOML into frozen dataclasses, every key and value checked: unknown
keys, wrong types and values outside a field's rule (rule()) are refused with a message that
names the setting."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from core.errors import ConfigError

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def rule(*, min: float | None = None, max: float | None = None,
         choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A field's metadata: the bounds or the choices its value must keep to."""
    return {"min": min, "max": max, "choices": choices}


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {describe_type(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table, got {value!r}")
        return build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        _, vtype = typing.get_args(tp)
        return {k: _convert(v, vtype, f"{key}.{k}", {}) for k, v in value.items()}
    if origin is list:
        (itype,) = typing.get_args(tp)
        if not isinstance(value, list) or not all(isinstance(v, itype) for v in value):
            raise ConfigError(f"{key} must be {describe_type(tp)}, got {value!r}")
        return list(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is not bool and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key} must be {describe_type(tp)}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key} must be at least {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{key} must be at most {meta['max']}, got {value!r}")
    return value


def build(cls: type[T], raw: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("env_only")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"unknown setting {where}{unknown[0]!r}; "
                          f"known settings: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], key, f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key} is required ({describe_type(hints[name])})")
    return cls(**kwargs)

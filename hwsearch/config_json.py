"""Versioned JSON form of any frozen config dataclass, so a run's settings can be saved, diffed and reloaded.

Each config becomes ``{"schema": 1, "type": "<ClassName>", "fields": {...}}``; nested configs nest the same way
and tuples become lists. Decoding rebuilds tuples and nested configs from the type hints and leaves value checks
to the dataclass's own ``__post_init__``, so there is one source of truth for what a valid config is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from hwsearch.errors import ConfigError
from hwsearch.io import atomic_write_json

__all__ = [
    "CONFIG_SCHEMA_VERSION",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "load_config",
    "read_config_dict",
]

CONFIG_SCHEMA_VERSION = 1
T = TypeVar("T")
_TOP_KEYS = ("schema", "type", "fields")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready form of ``cfg`` (a dataclass instance)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigError(f"{cfg!r} is not a config dataclass instance; pass e.g. TrainConfig()")
    fields = {f.name: _encode(getattr(cfg, f.name), f.name) for f in dataclasses.fields(cfg) if f.init}
    return {"schema": CONFIG_SCHEMA_VERSION, "type": type(cfg).__name__, "fields": fields}


def _encode(value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_encode(v, where) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(f"config field {where!r} = {value!r} is not JSON-serialisable; use numbers, strings or tuples")


def config_from_dict(cls: type[T], data: Any) -> T:
    """Rebuild a ``cls`` from :func:`config_to_dict` output; missing fields take the dataclass default."""
    name = cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{name} config must be a JSON object, got {type(data).__name__}; save one with save_config")
    extra = sorted(set(data) - set(_TOP_KEYS))
    if extra:
        raise ConfigError(f"{name} config has unknown top-level key(s) {extra}; use only {list(_TOP_KEYS)}")
    schema = data.get("schema")
    if type(schema) is not int or schema != CONFIG_SCHEMA_VERSION:
        raise ConfigError(
            f"{name} config schema {schema!r} is not supported; this hwsearch reads schema {CONFIG_SCHEMA_VERSION}"
        )
    if data.get("type") != name:
        raise ConfigError(f"config 'type' is {data.get('type')!r}, expected {name!r}; load it with the right class")
    values = data.get("fields", {})
    if not isinstance(values, dict):
        raise ConfigError(f"{name} config 'fields' must be a JSON object, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]  # cls: any config dataclass (T is unbounded)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{name} config has unknown field(s) {unknown}; known fields: {known}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _decode(hints[k], v, f"{name}.{k}") for k, v in values.items()})


def _decode(hint: Any, value: Any, where: str) -> Any:
    """Turn a JSON value back into what ``hint`` asks for; only shapes are checked here, not values."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _decode(rest[0], value, where) if len(rest) == 1 else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"config field {where} = {value!r} must be a JSON list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"config field {where} = {value!r} must be a list of {len(args)} items")
        return tuple(_decode(a, v, where) for a, v in zip(args, value, strict=True)) if args else tuple(value)
    return value


def save_config(path: str | os.PathLike[str], cfg: Any) -> Path:
    """Write ``cfg`` as versioned JSON, atomically, so a crash never leaves half a config behind."""
    return atomic_write_json(path, config_to_dict(cfg))


def read_config_dict(path: str | os.PathLike[str]) -> Any:
    """The raw JSON of a config file written by :func:`save_config` (for a caller that must see which fields
    the file holds, e.g. an older file lacking a newer field); every failure is a one-line :class:`ConfigError`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist; write one with save_config") from None
    except OSError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid JSON ({exc}); fix or rewrite it") from None
    return data  # its shape is config_from_dict's to check


def load_config(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read a config written by :func:`save_config`; every failure is a one-line :class:`ConfigError`."""
    return config_from_dict(cls, read_config_dict(path))

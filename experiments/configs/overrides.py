"""``key=value`` overrides of a (flat) config dataclass, parsed by the field's type."""

from __future__ import annotations

import dataclasses
import typing

__all__ = ["apply_overrides", "config_to_dict", "parse_value"]


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_value(text: str, annotation):
    """Parse ``text`` as ``annotation`` (int, float, bool, str, tuples, Optional[...])."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.lower() in ("none", "null", ""):
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(text, inner[0])
    if origin is tuple:
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p.strip(), args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_value(p.strip(), a) for p, a in zip(parts, args))
    if annotation is bool:
        return _bool(text)
    if annotation in (int, float, str):
        return annotation(text)
    raise ValueError(f"cannot parse a value of type {annotation}")


def apply_overrides(config, overrides):
    """Return ``config`` with ``["field=value", ...]`` applied; ValueError names a bad field."""
    hints = typing.get_type_hints(type(config))
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected field=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("config."):
            key = key[len("config."):]
        if key not in hints:
            names = ", ".join(sorted(f.name for f in dataclasses.fields(config)))
            raise ValueError(f"unknown config field {key!r}; fields are: {names}")
        try:
            changes[key] = parse_value(text.strip(), hints[key])
        except ValueError as e:
            raise ValueError(f"config field {key}: {e}") from None
    return dataclasses.replace(config, **changes)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)

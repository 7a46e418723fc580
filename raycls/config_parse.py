"""Settings from text: `section.key=value` overrides (`parse_overrides`), nested merges
(`merge`), and raw values from YAML or the command line checked against a section's field types
(`build_section`). No raycls import: `raycls.config` builds its dataclasses with these.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any

import yaml


def build_section(section: str, section_cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(section_cls)
    valid = [f.name for f in fields(section_cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ValueError(
                f"unknown setting {section}.{key}; valid keys for {section!r}: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return section_cls(**kwargs)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check `value` against a field's type hint, converting strings from the command line."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "1",
            "on",
            "false",
            "no",
            "0",
            "off",
        ):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"{name} expects true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{name} expects a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} expects {hint.__name__}, got {value!r}") from None
        if hint is int and not number.is_integer():
            raise ValueError(f"{name} expects an integer, got {value!r}")
        return hint(number)
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{name} expects a string, got {value!r}")
        return str(value)
    return value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Turn ["train.lr=0.01", ...] into {"train": {"lr": "0.01"}}; values stay strings."""
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise ValueError(
                f"override {item!r} must look like section.key=value, e.g. train.lr=0.001"
            )
        parsed = yaml.safe_load(value) if value.strip() else ""
        # YAML turns "1e-3" into a string and "none" stays a string; _coerce handles both.
        out.setdefault(section, {})[name] = value if isinstance(parsed, (dict, list)) else parsed
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge, `extra` winning."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section].update(values)
        else:
            out[section] = values
    return out
